"""The readings' figures: `python chapters/make_figures.py` draws them from the code, every figure a reading links
is committed, and every committed figure is one the script draws.

The figures that need no trained run are drawn here, except the forward process (loading the digits takes a few
seconds); together they take about 3 s of CPU. The others need trained runs, minutes each."""
import importlib.util
import re
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "chapters" / "make_figures.py"
FIGURE_LINK = re.compile(r"\]\((figures/[^)\s#]+\.png)\)")
QUICK = {("00-shapes-world", "scenes.png"), ("00-shapes-world", "shapeseval.png"), ("01-ddpm", "schedules.png"),
         ("01-ddpm", "unet.png"), ("02-latent-diffusion", "autoencoder.png"),
         ("02-latent-diffusion", "reconstructions.png"), ("03-text-conditioning", "pipeline.png")}


@pytest.fixture(scope="module")
def make_figures():
    spec = importlib.util.spec_from_file_location("make_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                                # its dataclasses look their module up
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                       # as the script runs: small models, one thread
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
        torch.set_num_threads(threads)


def drawn(make_figures) -> set[tuple[str, str]]:
    return {(f.chapter, f.name) for f in make_figures.FIGURES}


def test_quick_figures_are_written_as_pngs(make_figures, tmp_path):
    figures = [f for f in make_figures.FIGURES if (f.chapter, f.name) in QUICK]
    assert len(figures) == len(QUICK) and all(f.recipe is None for f in figures)
    results = make_figures.make(figures, tmp_path, make_figures.Context(tmp_path / "runs", False))
    for figure in figures:
        path = tmp_path / figure.chapter / "figures" / figure.name
        assert results[str(path)] == "written"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(path)                     # decodes the whole file: (H, W, 3 or 4)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0.05, figure.name
        assert path.stat().st_size < 300_000
    assert not list(tmp_path.rglob("*.tmp")), "atomic writes leave no temporary files"


def test_a_rerun_draws_the_same_bytes(make_figures, tmp_path):
    (figure,) = [f for f in make_figures.FIGURES if f.name == "schedules.png"]
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        make_figures.make([figure], out, make_figures.Context(tmp_path / "runs", False))
    path = Path(figure.chapter) / "figures" / figure.name
    assert (first / path).read_bytes() == (second / path).read_bytes()


def test_a_missing_run_is_skipped_with_the_command_that_trains_it(make_figures, tmp_path, capsys):
    (figure,) = [f for f in make_figures.FIGURES if f.recipe == "ddpm-digits"]
    runs = tmp_path / "runs"
    results = make_figures.make([figure], tmp_path, make_figures.Context(runs, False))
    path = tmp_path / figure.chapter / "figures" / figure.name
    assert results[str(path)].startswith("skipped")
    assert f"minidiff train ddpm-digits --out {runs / 'ddpm-digits'}" in capsys.readouterr().out
    assert not path.exists()


READINGS = sorted(ROOT.glob("chapters/[0-9][0-9]-*/README.md"))


@pytest.mark.parametrize("reading", READINGS, ids=[p.parent.name for p in READINGS])
def test_every_figure_a_reading_shows_is_committed_and_drawn_by_the_script(make_figures, reading):
    links = FIGURE_LINK.findall(reading.read_text())
    missing = [link for link in links if not (reading.parent / link).is_file()]
    assert not missing, f"{reading.relative_to(ROOT)} shows figures that are not committed: {missing}"
    undrawn = [link for link in links if (reading.parent.name, Path(link).name) not in drawn(make_figures)]
    assert not undrawn, f"chapters/make_figures.py does not draw {undrawn}"


def test_every_committed_figure_is_drawn_by_the_script_and_small(make_figures):
    committed = sorted(ROOT.glob("chapters/*/figures/*.png"))
    stray = [str(p.relative_to(ROOT)) for p in committed if (p.parents[1].name, p.name) not in drawn(make_figures)]
    assert not stray, f"figures that chapters/make_figures.py does not draw (stale?): {stray}"
    assert all(p.stat().st_size < 300_000 for p in committed)
    assert sum(p.stat().st_size for p in committed) < 3_000_000
