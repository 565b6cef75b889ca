"""Where each chapter's exercise files live: the learner's `chapters/NN-slug/exercises.py`, its checker
`minidiff.exercises.chNN`, and the reference solutions in the instructor kit, `instructors/solutions/NN-slug.py`."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = {f"ch{p.parent.name[:2]}": p.parent                         # {"ch01": chapters/01-ddpm, ...}
            for p in sorted(ROOT.glob("chapters/[0-9][0-9]-*/exercises.py"))}


def solutions_path(chapter: str) -> Path:
    """instructors/solutions/NN-slug.py for "chNN"."""
    return ROOT / "instructors" / "solutions" / f"{CHAPTERS[chapter].name}.py"
