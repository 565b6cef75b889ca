"""The instructor kit (instructors/) and the learners' self-check quizzes (chapters/NN-slug/quiz.md) hang together.

For every chapter folder: a quiz with 6 to 10 numbered questions and no answers or links into the kit, an
instructor file whose "Quiz answers" section answers exactly those numbers, and a study-time row in the syllabus.
Every relative markdown link in the kit and in the quizzes resolves to a file, every syllabus session adds up to
its 90 minutes, and the kit's index links every page. Plain file reading: well under a second.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "instructors"
CHAPTERS = sorted(p for p in (ROOT / "chapters").glob("[0-9][0-9]-*") if p.is_dir())

FENCE = re.compile(r"^```.*?^```", re.S | re.M)                  # fenced code blocks
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")                    # [text](target)
QUESTION = re.compile(r"^(?:(\d+)\.\s|###\s+Q(\d+)\b)", re.M)     # "1. ..." or "### Q1" at the start of a line
STUDY_ROW_TIME = re.compile(r"\d+(?:\.\d+)?\s*(?:s|min|h)\b")


def prose(path: Path) -> str:
    """The file's text without code blocks and inline code, where links and numbers are not meant as such."""
    return INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))


def section(text: str, heading: str) -> str:
    """The body of the level-2 section whose heading starts with `heading`, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(heading)}[^\n]*\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def question_numbers(text: str) -> list[int]:
    return [int(a or b) for a, b in QUESTION.findall(text)]


def test_there_are_chapters():
    assert [p.name[:2] for p in CHAPTERS][:4] == ["00", "01", "02", "03"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_each_chapter_has_a_quiz_and_an_instructor_file(chapter):
    assert (chapter / "quiz.md").is_file(), f"{chapter.name}: no quiz.md"
    assert (KIT / f"{chapter.name}.md").is_file(), f"{chapter.name}: no instructors/{chapter.name}.md"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_quiz_questions_are_numbered_and_answered(chapter):
    quiz = question_numbers(prose(chapter / "quiz.md"))
    assert 6 <= len(quiz) <= 10, f"{chapter.name}/quiz.md has {len(quiz)} questions; the kit asks for 6 to 10"
    assert quiz == list(range(1, len(quiz) + 1)), f"{chapter.name}/quiz.md numbers its questions {quiz}"
    answers = question_numbers(section(prose(KIT / f"{chapter.name}.md"), "Quiz answers"))
    assert answers == quiz, f"instructors/{chapter.name}.md answers {answers}, the quiz asks {quiz}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_quiz_holds_no_answers_and_no_way_into_the_kit(chapter):
    text = (chapter / "quiz.md").read_text(encoding="utf-8")
    assert "instructors" not in text, f"{chapter.name}/quiz.md mentions or links the instructor kit"
    assert not re.search(r"^#+\s*answers?\b", text, re.I | re.M), f"{chapter.name}/quiz.md has an answer section"


def markdown_files() -> list[Path]:
    return sorted(KIT.glob("*.md")) + sorted(ROOT.glob("chapters/*/quiz.md"))


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = []
    for target in LINK.findall(prose(path)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):   # https:, mailto:, same-page anchors
            continue
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links that resolve to nothing: {broken}"


def test_syllabus_gives_a_study_time_for_every_chapter():
    table = section(prose(KIT / "syllabus.md"), "Learner study time per chapter")
    rows = [line for line in table.splitlines() if line.startswith("|")]
    for chapter in CHAPTERS:
        row = [line for line in rows if chapter.name in line]
        assert row, f"syllabus.md: no study-time row for {chapter.name}"
        assert STUDY_ROW_TIME.search(row[0]), f"syllabus.md: the row for {chapter.name} gives no time"


def test_syllabus_sessions_fill_their_90_minutes():
    text = prose(KIT / "syllabus.md")
    sessions = re.findall(r"^### (Week \d+, session \d+)[^\n]*\n(.*?)(?=^###? |\Z)", text, re.S | re.M)
    assert len(sessions) == 8, f"syllabus.md has {len(sessions)} sessions; 4 weeks of 2 are planned"
    for name, body in sessions:
        minutes = [int(m) for m in re.findall(r"^\|\s*(\d+)\s*\|", body, re.M)]
        assert minutes and sum(minutes) == 90, f"syllabus.md, {name}: activities add up to {sum(minutes)} minutes"


def test_kit_index_links_every_page():
    index = prose(KIT / "README.md")
    linked = {target.split("#", 1)[0] for target in LINK.findall(index)}
    missing = [p.name for p in KIT.glob("*.md") if p.name != "README.md" and p.name not in linked]
    assert not missing, f"instructors/README.md does not link {missing}"
