"""Captions of the Shapes world: a small grammar that writes a caption from a spec and reads it back.

A `PromptSpec` is what a caption claims: which things (shape, optional color and size, a count), and
optionally a spatial relation between the first two or a position on the canvas. `describe` writes one of
several paraphrases of a spec; `parse` reads any of them back to the same spec. The grammar (data/README.md
has it with examples):

    caption   := [intro] body [" on a " BACKGROUND " background"]
    intro     := "a picture of " | "an image of "
    body      := thing                                       single object
               | thing (" and " | " with ") thing            two objects
               | thing " " RELATION " " thing                spatial relation
               | NUMBER " " [SIZE " "] [COLOR " "] PLURAL     counting  ("three purple squares")
               | NUMBER " " [SIZE " "] PLURAL ", all " COLOR
               | thing " " ("in" | "at" | "on") " the " POSITION          position
               | ("in" | "at" | "on") " the " POSITION ", " thing
    thing     := ("a" | "an" | "one") " " [SIZE " "] [COLOR " "] SHAPE
               | ("a" | "an") " " [SIZE " "] SHAPE " colored " COLOR
    RELATION  := "above" | "below" | "left of" | "to the left of" | "right of" | "to the right of"
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace

import numpy as np

from minidiff.data.shapes import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES

CATEGORIES = ("single_object", "two_objects", "attribute_binding", "spatial_relation", "counting", "position")
NUMBERS = {"two": 2, "three": 3, "four": 4}
NUMBER_WORDS = {n: w for w, n in NUMBERS.items()}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
           "cross": "crosses"}
RELATION_PHRASES = {"above": ("above",), "below": ("below",), "left of": ("left of", "to the left of"),
                    "right of": ("right of", "to the right of")}
INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
INTROS = ("a picture of ", "an image of ")
PREPOSITIONS = {"top left": ("in", "at"), "top right": ("in", "at"), "bottom left": ("in", "at"),
                "bottom right": ("in", "at"), "top": ("at",), "bottom": ("at",), "left": ("on",), "right": ("on",),
                "center": ("in", "at")}


@dataclass(frozen=True)
class Thing:
    """One kind of object a caption names. None means the caption leaves that attribute open."""
    shape: str
    color: str | None = None
    size: str | None = None
    count: int = 1


@dataclass(frozen=True)
class PromptSpec:
    """What a caption claims. `relation` reads things[0] <relation> things[1]; `position` applies to all things."""
    category: str
    things: tuple[Thing, ...]
    relation: str | None = None
    position: str | None = None
    background: str | None = None

    def __post_init__(self):
        """Unknown names are errors here, so nothing downstream meets a color or shape it cannot draw."""
        from minidiff.data.shapes import MAX_OBJECTS, RELATIONS, check_attribute

        check_attribute("category", self.category, CATEGORIES)
        if not 1 <= len(self.things) <= 2:
            raise ValueError(f"a prompt names one or two kinds of object, got {len(self.things)}")
        for t in self.things:
            check_attribute("shape", t.shape, SHAPES)
            if t.color is not None:
                check_attribute("color", t.color, COLORS)
            if t.size is not None:
                check_attribute("size", t.size, SIZES)
            if not 1 <= t.count <= MAX_OBJECTS:
                raise ValueError(f"a count must be 1 to {MAX_OBJECTS}, got {t.count}")
        if self.relation is not None:
            check_attribute("relation", self.relation, RELATIONS)
        if self.position is not None:
            check_attribute("position", self.position, POSITIONS)
        if self.background is not None:
            check_attribute("background", self.background, BACKGROUNDS)

    def canonical(self) -> "PromptSpec":
        """The same claim in one spelling: 'B below A' becomes 'A above B', 'right of' becomes 'left of', and the
        two things of a pair are sorted. Two specs make the same claim iff their canonical forms are equal."""
        things, relation = self.things, self.relation
        if relation in ("below", "right of"):
            things, relation = things[::-1], INVERSE[relation]
        elif relation is None and len(things) == 2:
            things = tuple(sorted(things, key=lambda t: (t.shape, t.color or "", t.size or "", t.count)))
        category = "two_objects" if self.category == "attribute_binding" else self.category
        return replace(self, category=category, things=tuple(things), relation=relation)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> "PromptSpec":
        d = json.loads(text) if isinstance(text, str) else dict(text)
        d["things"] = tuple(Thing(**t) for t in d["things"])
        return cls(**d)


# ---------------------------------------------------------------------------- writing


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe_thing(thing: Thing, rng: np.random.Generator) -> str:
    words = [w for w in (thing.size, thing.color, thing.shape) if w]
    if thing.color and rng.random() < 0.15:                         # "a large circle colored red"
        head = " ".join(w for w in (thing.size, thing.shape) if w)
        return f"{_article(head)} {head} colored {thing.color}"
    article = "one" if rng.random() < 0.1 else _article(words[0])
    return f"{article} {' '.join(words)}"


def describe(spec: PromptSpec, rng: np.random.Generator) -> str:
    """One caption for a spec, picking a paraphrase and a word order at random."""
    things = spec.things
    if spec.category == "counting":
        (t,) = things
        number = NUMBER_WORDS[t.count]
        if t.color and rng.random() < 0.3:
            body = " ".join(w for w in (number, t.size, PLURALS[t.shape]) if w) + f", all {t.color}"
        else:
            body = " ".join(w for w in (number, t.size, t.color, PLURALS[t.shape]) if w)
    elif spec.relation:
        a, b, relation = things[0], things[1], spec.relation
        if rng.random() < 0.5:                                      # "B below A" for "A above B"
            a, b, relation = b, a, INVERSE[relation]
        phrase = RELATION_PHRASES[relation][rng.integers(len(RELATION_PHRASES[relation]))]
        body = f"{describe_thing(a, rng)} {phrase} {describe_thing(b, rng)}"
    elif spec.position:
        (t,) = things
        choices = PREPOSITIONS[spec.position]
        preposition = choices[rng.integers(len(choices))]
        if rng.random() < 0.3:
            body = f"{preposition} the {spec.position}, {describe_thing(t, rng)}"
        else:
            body = f"{describe_thing(t, rng)} {preposition} the {spec.position}"
    elif len(things) == 2:
        a, b = things if rng.random() < 0.5 else things[::-1]
        body = f"{describe_thing(a, rng)} {'and' if rng.random() < 0.8 else 'with'} {describe_thing(b, rng)}"
    else:
        (t,) = things
        body = describe_thing(t, rng)
    if rng.random() < 0.15 and not body.startswith(("in ", "at ", "on ")):
        body = INTROS[rng.integers(len(INTROS))] + body
    if spec.background:
        body += f" on a {spec.background} background"
    return body


def plain_caption(spec: PromptSpec) -> str:
    """The plainest caption of a spec ('a red circle above a blue square', 'three purple squares'):
    the wording of the ShapesEval suites."""
    thing = lambda t: f"{_article((t.size or t.color or t.shape)[0])} " + " ".join(    # noqa: E731
        w for w in (t.size, t.color, t.shape) if w)
    things = spec.things
    if spec.category == "counting":
        t = things[0]
        text = " ".join(w for w in (NUMBER_WORDS[t.count], t.size, t.color, PLURALS[t.shape]) if w)
    elif spec.relation:
        text = f"{thing(things[0])} {spec.relation} {thing(things[1])}"
    elif spec.position:
        text = f"{thing(things[0])} {PREPOSITIONS[spec.position][0]} the {spec.position}"
    else:
        text = " and ".join(thing(t) for t in things)
    return text + (f" on a {spec.background} background" if spec.background else "")


# ---------------------------------------------------------------------------- reading


def _alternatives(words) -> str:
    return "|".join(sorted(map(re.escape, words), key=len, reverse=True))   # longest first: "top left" before "top"


_SIZE, _COLOR, _SHAPE = _alternatives(SIZES), _alternatives(COLORS), _alternatives(SHAPES)
_THING = re.compile(rf"^(?:a|an|one) (?:(?P<size>{_SIZE}) )?(?:(?P<color>{_COLOR}) )?(?P<shape>{_SHAPE})"
                    rf"(?: colored (?P<color2>{_COLOR}))?$")
_COUNT = re.compile(rf"^(?P<number>{_alternatives(NUMBERS)}) (?:(?P<size>{_SIZE}) )?(?:(?P<color>{_COLOR}) )?"
                    rf"(?P<plural>{_alternatives(PLURALS.values())})(?:, all (?P<color2>{_COLOR}))?$")
_RELATION = re.compile(rf"^(?P<a>.+?) (?P<relation>{_alternatives(p for ps in RELATION_PHRASES.values() for p in ps)}) "
                       rf"(?P<b>(?:a|an|one) .+)$")
_POSITION_AFTER = re.compile(rf"^(?P<thing>.+) (?:in|at|on) the (?P<position>{_alternatives(POSITIONS)})$")
_POSITION_BEFORE = re.compile(rf"^(?:in|at|on) the (?P<position>{_alternatives(POSITIONS)}), (?P<thing>.+)$")
_PAIR = re.compile(r"^(?P<a>.+?) (?:and|with) (?P<b>(?:a|an|one) .+)$")
_BACKGROUND = re.compile(rf"^(?P<body>.+) on a (?P<background>{_alternatives(BACKGROUNDS)}) background$")


class CaptionError(ValueError):
    pass


def parse_thing(text: str) -> Thing:
    m = _THING.match(text)
    if not m or (m["color"] and m["color2"]):
        raise CaptionError(f"cannot read {text!r} as one object: expected e.g. 'a large red circle' "
                           f"(shapes: {', '.join(SHAPES)}; colors: {', '.join(COLORS)}; sizes: {', '.join(SIZES)})")
    return Thing(m["shape"], m["color"] or m["color2"], m["size"])


def parse(caption: str) -> PromptSpec:
    """Read a caption written by `describe` (or by hand, in the same grammar) back into its spec."""
    text = " ".join(caption.strip().lower().rstrip(".").split())
    if not text:
        raise CaptionError("empty prompt: write what the image should show, e.g. 'a red circle above a blue square'")
    background = None
    if m := _BACKGROUND.match(text):
        text, background = m["body"], m["background"]
    for intro in INTROS:
        text = text.removeprefix(intro)
    try:
        if m := _COUNT.match(text):
            if m["color"] and m["color2"]:
                raise CaptionError(f"two colors in {caption!r}")
            shape = next(s for s, p in PLURALS.items() if p == m["plural"])
            thing = Thing(shape, m["color"] or m["color2"], m["size"], NUMBERS[m["number"]])
            return PromptSpec("counting", (thing,), background=background)
        if m := _POSITION_BEFORE.match(text) or _POSITION_AFTER.match(text):
            return PromptSpec("position", (parse_thing(m["thing"]),), position=m["position"], background=background)
        if m := _RELATION.match(text):
            relation = next(r for r, phrases in RELATION_PHRASES.items() if m["relation"] in phrases)
            return PromptSpec("spatial_relation", (parse_thing(m["a"]), parse_thing(m["b"])), relation=relation,
                              background=background)
        if m := _PAIR.match(text):
            return PromptSpec("two_objects", (parse_thing(m["a"]), parse_thing(m["b"])), background=background)
        return PromptSpec("single_object", (parse_thing(text),), background=background)
    except CaptionError as e:
        raise CaptionError(f"cannot read the prompt {caption!r}: {e}; data/README.md has the caption grammar") from None
