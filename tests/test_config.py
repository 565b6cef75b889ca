"""key=value overrides: type checking, ambiguity, unknown keys, JSON round trips."""
from dataclasses import dataclass

import pytest

from minidiff.config import apply_overrides, from_dict, to_dict
from minidiff.models import UNetConfig
from minidiff.recipes import make_run_config


@dataclass
class A:
    lr: float = 1.0
    steps: int = 3
    flag: bool = False
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    head: int | None = None


@dataclass
class B:
    steps: int = 5


def test_overrides_are_typed():
    out = apply_overrides({"a": A()}, ["lr=1e-3", "steps=10", "flag=true", "name=y", "sizes=4,5,6", "head=8"])["a"]
    assert out == A(lr=1e-3, steps=10, flag=True, name="y", sizes=(4, 5, 6), head=8)
    assert apply_overrides({"a": A(head=3)}, ["head=none"])["a"].head is None


@pytest.mark.parametrize("item, message", [("lr=fast", "not a valid float"), ("a.steps=2.5", "not a valid int"),
                                           ("flag=maybe", "not a valid bool"), ("nope=1", "unknown config key"),
                                           ("lr", "not key=value"), ("steps=1", "ambiguous"),
                                           ("c.steps=1", "unknown config section")])
def test_bad_overrides(item, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides({"a": A(), "b": B()}, [item])


def test_overrides_are_validated_together():
    """Fewer levels and an attention level that fits them: each alone would be refused by UNetConfig's checks."""
    out = apply_overrides({"model": UNetConfig.toy()}, ["block_channels=8,16", "attention_levels=1"])["model"]
    assert out.block_channels == (8, 16) and out.attention_levels == (1,)


def test_section_prefix_resolves_ambiguity():
    out = apply_overrides({"a": A(), "b": B()}, ["b.steps=9"])
    assert out["b"].steps == 9 and out["a"].steps == 3



@dataclass
class Outer:
    inner: A = None
    width: int = 4


def test_dotted_paths_reach_nested_configs():
    out = apply_overrides({"m": Outer(A())}, ["m.inner.steps=7", "m.width=8"])["m"]
    assert out.inner.steps == 7 and out.inner.lr == 1.0 and out.width == 8
    with pytest.raises(ValueError, match="unknown config key 'm.inner.nope'"):
        apply_overrides({"m": Outer(A())}, ["m.inner.nope=1"])
    with pytest.raises(ValueError, match="cannot be set from the command line"):
        apply_overrides({"m": Outer(A())}, ["m.inner=1"])
    assert make_run_config("clip-shapes", overrides=["model.text.causal=false"])["model"]["text"]["causal"] is False

def test_json_round_trip():
    config = UNetConfig.toy(block_channels=(16, 32), attention_levels=(1,))
    assert from_dict(UNetConfig, to_dict(config)) == config
    with pytest.raises(ValueError, match="no fields"):
        from_dict(UNetConfig, {**to_dict(config), "bogus": 1})


def test_run_config_errors():
    with pytest.raises(ValueError, match="unknown recipe"):
        make_run_config("ddpm-cats")
    with pytest.raises(ValueError, match="unknown preset"):
        make_run_config("ddpm-digits", "unet-huge")
    with pytest.raises(ValueError, match="does not fit recipe"):
        make_run_config("ddpm-digits", "mlp-toy")
    with pytest.raises(ValueError, match="multiple of 8"):
        make_run_config("ddpm-digits", overrides=["sample_size=20"])
    with pytest.raises(ValueError, match="unknown schedule"):
        make_run_config("ddpm-digits", overrides=["schedule=quadratic"])
    with pytest.raises(ValueError, match="sample_steps"):
        make_run_config("ddpm-digits", overrides=["sample_steps=5000"])
    config = make_run_config("ddpm-digits", "ddpm-cifar10")
    assert config["model"]["block_channels"] == [128, 256, 256, 256] and config["model"]["in_channels"] == 1
