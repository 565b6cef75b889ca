"""Building blocks shared by every network: embeddings, residual blocks, attention."""
from minidiff.blocks.attention import (GEGLU, Attention, FeedForward, SpatialSelfAttention, SpatialTransformer,
                                       TransformerBlock, attention)
from minidiff.blocks.embeddings import TimestepEmbedding, sinusoidal_embedding
from minidiff.blocks.resnet import Downsample, MidBlock, ResBlock, Upsample, check_images

__all__ = ["Attention", "Downsample", "FeedForward", "GEGLU", "MidBlock", "ResBlock", "SpatialSelfAttention",
           "SpatialTransformer", "TimestepEmbedding", "TransformerBlock", "Upsample", "attention", "check_images",
           "sinusoidal_embedding"]
