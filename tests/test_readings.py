"""The chapter readings as a learner meets them: a core text of at most about 6,000 words that ends in a summary,
with objectives, prerequisites and measured times, lab notes beside it, and every relative link resolving (figures
included: `python chapters/make_figures.py` draws them)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READINGS = sorted(ROOT.glob("chapters/[0-9][0-9]-*/README.md"))
MAX_WORDS = 6200            # "at most about 6,000 words"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def words(text: str) -> int:
    return len(text.split())


def relative_links(path: Path) -> list[str]:
    """Targets of the markdown links and images in a file that point inside the repository."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)      # code blocks hold no links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target) and not target.startswith("#")]


def test_the_readings_are_found():
    assert [p.parent.name[:2] for p in READINGS][:4] == ["00", "01", "02", "03"]


@pytest.mark.parametrize("reading", READINGS, ids=[p.parent.name for p in READINGS])
def test_a_reading_is_a_core_text_with_its_parts(reading):
    text = reading.read_text()
    assert words(text) <= MAX_WORDS, f"{reading.relative_to(ROOT)} has {words(text)} words; move lab notes out"
    headings = [h.lower() for h in re.findall(r"^#+ (.+)$", text, flags=re.M)]
    for part in ("objectives", "prerequisites", "exercises", "summary"):
        assert any(part in h for h in headings), f"{reading.relative_to(ROOT)} has no '{part}' section"
    assert any("time" in h for h in headings), f"{reading.relative_to(ROOT)} states no measured times"
    sections = [h.lower() for h in re.findall(r"^## (.+)$", text, flags=re.M)]
    assert any(h.startswith("summary") for h in sections[-2:]), "the reading ends with its summary (or it and further reading)"
    assert re.search(r"figures/[\w-]+\.png", text), "a reading shows figures drawn from the code"


@pytest.mark.parametrize("reading", [p for p in READINGS if p.parent.name[:2] != "00"],
                         ids=[p.parent.name for p in READINGS if p.parent.name[:2] != "00"])
def test_lab_notes_sit_beside_the_reading_and_are_linked(reading):
    assert (reading.parent / "notes.md").is_file()
    assert any(target.split("#")[0] == "notes.md" for target in relative_links(reading))


DOCUMENTS = sorted([*ROOT.glob("chapters/[0-9][0-9]-*/*.md"), ROOT / "README.md", *ROOT.glob("docs/*.md")])


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(p.relative_to(ROOT)) for p in DOCUMENTS])
def test_every_relative_link_resolves(document):
    missing = [target for target in relative_links(document)
               if not (document.parent / target.split("#")[0]).exists()]
    assert not missing, f"{document.relative_to(ROOT)} links to missing files: {missing}"
