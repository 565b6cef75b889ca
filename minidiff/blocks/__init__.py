"""Building blocks shared by every network: embeddings, residual blocks, attention."""
from minidiff.blocks.attention import SpatialSelfAttention, attention
from minidiff.blocks.embeddings import TimestepEmbedding, sinusoidal_embedding
from minidiff.blocks.resnet import Downsample, MidBlock, ResBlock, Upsample, check_images

__all__ = ["Downsample", "MidBlock", "ResBlock", "SpatialSelfAttention", "TimestepEmbedding", "Upsample", "attention",
           "check_images", "sinusoidal_embedding"]
