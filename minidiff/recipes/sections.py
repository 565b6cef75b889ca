"""The config sections every chapter's recipes share, and how a section is saved and read back.

A section is a config dataclass with a `validate()` that checks its own ranges (one line each, naming the allowed
range). `register_section(name, cls, family)` tells config.json readers which class a section is; where one section
name has several classes (the process: Gaussian, or Chapter 6's rectified flow; a text encoder: CLIP, T5, a language
model), the saved section carries a "family" tag naming it. Each chapter registers the sections it introduces.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from minidiff.config import from_dict, to_dict
from minidiff.io import FileError
from minidiff.process import PREDICTIONS, SAMPLERS, SCHEDULES, VARIANCES, GaussianDiffusion, NoiseSchedule
from minidiff.training.loop import TrainConfig


def check_range(key: str, value, low=None, high=None, hint: str = "") -> None:
    """One-line error unless low <= value <= high (None: unbounded) and value is a finite number."""
    if isinstance(value, float) and not math.isfinite(value) or (low is not None and value < low) or (
            high is not None and value > high):
        allowed = (f"between {low} and {high}" if low is not None and high is not None
                   else f"at least {low}" if low is not None else f"at most {high}")
        raise ValueError(f"{key}={value} must be {allowed}{hint}")


def check_choice(value, allowed, key: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {key} {value!r}; choose one of {', '.join(allowed)}")


@dataclass
class DiffusionConfig:
    """The Gaussian process of DDPM (Chapters 1-5): noise schedule, number of steps, what the network predicts."""
    family = "gaussian"            # the section's family tag in config.json (Chapter 6 adds rectified flow)
    schedule: str = "linear"       # 'linear' (DDPM) or 'cosine' (Improved DDPM)
    num_steps: int = 1000          # T
    prediction: str = "eps"        # what the network predicts: 'eps', 'x0' or 'v'
    min_snr_gamma: float | None = None   # None: L_simple; a number: Min-SNR-gamma loss weighting (5 in the paper)

    def validate(self) -> None:
        check_choice(self.schedule, SCHEDULES, "schedule")
        check_choice(self.prediction, PREDICTIONS, "prediction")
        check_range("num_steps", self.num_steps, 1, 100_000)
        if self.min_snr_gamma is not None:
            check_range("min_snr_gamma", self.min_snr_gamma, 1e-6, hint=" (5 in the paper), or none to turn it off")

    def build(self) -> GaussianDiffusion:
        return GaussianDiffusion(NoiseSchedule.make(self.schedule, self.num_steps), self.prediction, self.min_snr_gamma)


@dataclass
class SampleConfig:
    """The default sampler of a Gaussian-process run, for grids during training, `minidiff sample` and `eval`."""
    family = "gaussian"
    sampler: str = "ddpm"          # 'ddpm' (ancestral) or 'ddim'
    sample_steps: int = 100        # sampling steps (<= num_steps)
    eta: float = 0.0               # DDIM's eta
    variance: str = "beta_tilde"   # DDPM's sigma^2: 'beta' or 'beta_tilde'
    clip_x0: bool = True           # clip the predicted x0 to [-1, 1] at each step
    num_images: int = 64           # images in each grid written during training

    def validate(self) -> None:
        check_choice(self.sampler, SAMPLERS, "sampler")
        check_choice(self.variance, VARIANCES, "variance")
        check_range("eta", self.eta, 0.0, 1.0, " (0: deterministic DDIM, 1: as noisy as DDPM)")
        check_range("sample_steps", self.sample_steps, 1)
        check_range("num_images", self.num_images, 1, 10_000)


@dataclass
class DataConfig:
    dataset: str = "digits"        # 'digits', 'shapes', or a 2D distribution: swiss_roll, two_moons, eight_gaussians
    num_points: int = 20000        # training points for 2D toys
    train_examples: int = 5000     # training scenes for 'shapes' (train split examples 0..train_examples-1)
    category_weights: tuple[float, ...] | None = None   # 'shapes': how often each caption category is drawn, in the
                                   # order of TRAIN_CATEGORIES (single, two, relation, counting, position); None: the
                                   # Shapes world's default 0.25,0.25,0.2,0.15,0.15 (weights are normalised)

    def validate(self) -> None:
        from minidiff.data.shapes_dataset import TRAIN_CATEGORIES

        check_range("num_points", self.num_points, 1, 10_000_000)
        check_range("train_examples", self.train_examples, 1, 200_000, " (a Shapes scene at 32 px is 12 KB in memory)")
        weights = self.category_weights
        if weights is None:
            return
        if len(weights) != len(TRAIN_CATEGORIES) or min(weights) < 0 or not 0 < sum(weights) < math.inf:
            raise ValueError(f"category_weights={','.join(map(str, weights))}: give {len(TRAIN_CATEGORIES)} non-negative "
                             f"weights, not all zero, for the Shapes categories {','.join(TRAIN_CATEGORIES)}")


# Section name -> {family tag -> config class}. A chapter registers the sections it introduces; a section with
# several families (the process, a text encoder) is saved with its tag.
SECTIONS: dict[str, dict[str, type]] = {}
DEFAULT_FAMILY = {}                # section -> the family of a config.json written before tags existed


def register_section(name: str, config_cls: type, family: str | None = None) -> None:
    family = family or getattr(config_cls, "family", "default")
    SECTIONS.setdefault(name, {})[family] = config_cls
    DEFAULT_FAMILY.setdefault(name, family)


register_section("diffusion", DiffusionConfig)
register_section("sample", SampleConfig)
register_section("train", TrainConfig)
register_section("data", DataConfig)


def section_to_dict(name: str, config) -> dict:
    """A section as saved in config.json: its fields, and its family tag where the section has families."""
    tag = next((f for f, cls in SECTIONS.get(name, {}).items() if type(config) is cls), "default")
    data = to_dict(config)
    return data if tag == "default" else {"family": tag, **data}


def section_from_dict(name: str, data: dict):
    families = SECTIONS[name]
    data = dict(data)
    family = data.pop("family", DEFAULT_FAMILY[name])     # runs saved before tags existed: the first family
    if family not in families:
        raise FileError(f"config section {name!r} names family {family!r}, which this minidiff does not have "
                        f"(it has {', '.join(families)}); the run was written by a newer minidiff: upgrade it")
    return from_dict(families[family], data)


class Sections(dict):
    """A run's config sections by name ('model', 'train', ...), knowing the recipe they belong to."""

    def __init__(self, recipe: str, sections: dict):
        super().__init__(sections)
        self.recipe = recipe

    def replace(self, **changes) -> "Sections":
        return Sections(self.recipe, {**self, **changes})


SIZE_WORDS = ("channels", "size", "dim", "hidden", "width", "heads", "layers", "groups", "length")


def check_model_sizes(config, prefix: str = "") -> None:
    """Every count in a model config (channels, widths, layers, heads, ...; nested configs too) is at least 1, and no
    integer is negative: a zero width would build a network with no weights, a negative one fails deep in torch."""
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_model_sizes(value, f"{key}.")
            continue
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int):
                continue
            if v < 0 or (v == 0 and any(word in f.name for word in SIZE_WORDS)):
                raise ValueError(f"{key}={value} must be at least 1; it counts channels, layers or positions")


def check_image_size(model, network: str, shapes_pixels: bool = False) -> None:
    """The image size must pass through the network's halvings (and the Shapes world renders 16 to 256 pixels)."""
    factor = model.factor if network == "autoencoder" else model.downsampling_factor   # U-Net: patch x halvings
    size = model.sample_size
    if size % factor or size < factor:
        raise ValueError(f"image size sample_size={size} cannot go through this {network}, whose smallest "
                         f"feature map is {factor} times smaller; use a multiple of {factor}")
    if shapes_pixels and not 16 <= size <= 256:
        raise ValueError(f"sample_size={size}: the Shapes world renders 16 to 256 pixels")
