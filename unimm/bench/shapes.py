"""Synthetic shapes: a procedurally generated benchmark for unified multimodal models at laptop scale.

The Janus papers compare understanding (VQA-style benchmarks) and text-to-image generation (GenEval: Ghosh et
al., 2023, "GenEval: An Object-Focused Framework for Evaluating Text-to-Image Alignment"). This module makes a
tiny world with the same two faces and exact ground truth:

* an image (default 32 x 32) with one to a few coloured shapes (circle, square, upward triangle) on a plain grey
  background; shapes never overlap and keep a gap, so counts and positions are unambiguous;
* a caption to generate it from (``"a red circle above a blue square"``), together with the :class:`Spec` it
  states, so a programmatic checker (:mod:`unimm.bench.checker`) can score a generated image without parsing;
* question/answer pairs for understanding, tagged ``colour``, ``shape``, ``count`` or ``position``, whose answers
  are single words from :data:`ANSWER_VOCAB`.

Splits are made with :func:`make_split`. Every sample comes from its own random stream
(``seed / split / index``), so a split of 100 starts with the split of 10, and the run is the same on every
machine (only ``random.Random(str).random()`` is used, whose sequence Python guarantees across versions). The
scene space itself is cut into disjoint parts by a hash of the scene (:func:`split_of`): no test image can equal
a training image, whatever the seeds and sizes.

Coordinates are pixels with x to the right and y down; boxes are ``(x0, y0, x1, y1)`` with ``x1, y1`` exclusive.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from unimm.registry import ConfigError, InputError

# ----------------------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------------------

KINDS: tuple[str, ...] = ("circle", "square", "triangle")

#: Colour name -> RGB. Every pair, and every colour and :data:`BACKGROUND`, is at least 105 apart in RGB, so a
#: nearest-colour rule with a distance cap separates them even after blur and noise.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (50, 200, 50),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "white": (240, 240, 240),
    "purple": (150, 60, 200),
    "black": (20, 20, 20),
}

#: Colours used unless a config says otherwise (purple and black are available but closer to their neighbours).
DEFAULT_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "white")

BACKGROUND: tuple[int, int, int] = (100, 100, 100)

#: ``a REL b`` relations; the caption wording of each is in :data:`RELATION_WORDS`.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
RELATION_WORDS: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")
MAX_SHAPES = len(NUMBER_WORDS) - 1

QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "position")

#: Every answer an understanding question can have (closed vocabulary, single words).
ANSWER_VOCAB: tuple[str, ...] = tuple(PALETTE) + KINDS + NUMBER_WORDS + ("yes", "no")

#: Split name -> hash buckets (out of 100) its scenes come from; the buckets do not overlap.
SPLIT_BUCKETS: dict[str, range] = {"test": range(0, 10), "val": range(10, 20), "train": range(20, 100)}

#: A relation is stated in a caption or asked about only when its strength (see :func:`relations_between`)
#: reaches this; the checker accepts any strength above 0.5, which leaves a margin for generated images.
CLEAR_RELATION = 0.7


# ----------------------------------------------------------------------------------------------------------------
# Geometry shared with the checker
# ----------------------------------------------------------------------------------------------------------------


def box_centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    """Centre ``(x, y)`` of a box ``(x0, y0, x1, y1)``."""
    return ((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0)


def relations_between(box_a, box_b, shrink: float = 0.1) -> dict[str, float]:
    """Which of ``a left of / right of / above / below b`` hold, and how strongly.

    In the spirit of GenEval's position rule: the offset between the box centres is first reduced on each axis by
    ``shrink`` times the two boxes' summed extent on that axis (so touching neighbours are not "left of" each
    other), then divided by the length of the raw offset. A relation holds when its component exceeds 0.5 (the
    direction is within 60 degrees of the axis); the value returned is that component, in (0.5, 1].

    Args:
        box_a, box_b: boxes ``(x0, y0, x1, y1)`` in pixels, y down.
        shrink: fraction of the summed box extents removed from the offset.

    Returns:
        ``{relation: strength}`` for each relation that holds (possibly two, e.g. diagonal; possibly none).
    """
    (ax, ay), (bx, by) = box_centre(box_a), box_centre(box_b)
    dx, dy = ax - bx, ay - by
    norm = math.hypot(dx, dy)
    if norm == 0.0:
        return {}
    ext_x = (box_a[2] - box_a[0]) + (box_b[2] - box_b[0])
    ext_y = (box_a[3] - box_a[1]) + (box_b[3] - box_b[1])
    rx = math.copysign(max(abs(dx) - shrink * ext_x, 0.0), dx) / norm
    ry = math.copysign(max(abs(dy) - shrink * ext_y, 0.0), dy) / norm
    out = {}
    for name, value in (("left of", -rx), ("right of", rx), ("above", -ry), ("below", ry)):
        if value > 0.5:
            out[name] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One shape: its kind, colour name and square bounding box of side ``size`` whose top-left is ``(x0, y0)``.

    Circles fill their box's inscribed circle, squares the box, triangles point up with their base on the box's
    bottom edge and apex at the middle of its top edge.
    """

    kind: str
    colour: str
    x0: int
    y0: int
    size: int

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive."""
        return (self.x0, self.y0, self.x0 + self.size, self.y0 + self.size)

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the bounding box ``(x, y)``."""
        return box_centre(self.bbox)

    @property
    def name(self) -> str:
        """``"red circle"``."""
        return f"{self.colour} {self.kind}"

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "colour": self.colour,
            "centre": list(self.centre),
            "size": self.size,
            "bbox": list(self.bbox),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Shape:
        return cls(kind=d["kind"], colour=d["colour"], x0=int(d["bbox"][0]), y0=int(d["bbox"][1]), size=int(d["size"]))


@dataclass(frozen=True)
class Spec:
    """What a caption asks for: objects ``(colour, kind)`` and relations ``(subject, relation, reference)``.

    Indices in ``relations`` point into ``objects``. :meth:`caption` writes the canonical caption and
    :meth:`parse` reads one (or a free-text caption in the same small grammar) back.
    """

    objects: tuple[tuple[str, str], ...]
    relations: tuple[tuple[int, str, int], ...] = ()

    def __post_init__(self):
        if not self.objects:
            raise InputError("a Spec needs at least one object (colour, kind)")
        for colour, kind in self.objects:
            if colour not in PALETTE or kind not in KINDS:
                raise InputError(
                    f"unknown object ({colour!r}, {kind!r}): colours are {sorted(PALETTE)}, kinds are {list(KINDS)}"
                )
        for i, rel, j in self.relations:
            if rel not in RELATIONS or not (0 <= i < len(self.objects)) or not (0 <= j < len(self.objects)) or i == j:
                raise InputError(
                    f"bad relation ({i}, {rel!r}, {j}) for {len(self.objects)} objects: use two different "
                    f"object indices and one of {list(RELATIONS)}"
                )

    def caption(self) -> str:
        """Canonical caption.

        One object: ``"a red circle"``. Relations become clauses joined by ``" and "``; an object already named is
        referred to with ``the``: ``"a red circle above a blue square and a green triangle to the left of the
        blue square"``. Objects in no relation are listed: ``"a red circle and a blue square"``.
        """
        named: set[int] = set()
        clauses = []

        def ref(i: int) -> str:
            article = "the" if i in named else "a"
            named.add(i)
            colour, kind = self.objects[i]
            return f"{article} {colour} {kind}"

        for i, rel, j in self.relations:
            subject = ref(i)
            clauses.append(f"{subject} {RELATION_WORDS[rel]} {ref(j)}")
        for i in range(len(self.objects)):
            if i not in named:
                clauses.append(ref(i))
        return " and ".join(clauses)

    @classmethod
    def parse(cls, caption: str) -> Spec:
        """Read a caption in the grammar :meth:`caption` writes (case, punctuation and spacing are free).

        ``a|an`` introduces a new object, ``the`` refers to the last object of that colour and kind (or introduces
        it if there is none). Relations may be written ``left of``, ``to the left of``, ``on the left of``, and so
        on. Raises :class:`InputError` naming the clause that does not fit.
        """
        text = _normalise_text(caption)
        if not text:
            raise InputError("empty caption: write e.g. 'a red circle above a blue square'")
        objects: list[tuple[str, str]] = []
        relations: list[tuple[int, str, int]] = []

        def resolve(article: str, colour: str, kind: str) -> int:
            if article == "the":
                for k in range(len(objects) - 1, -1, -1):
                    if objects[k] == (colour, kind):
                        return k
            objects.append((colour, kind))
            return len(objects) - 1

        for clause in text.split(" and "):
            m = _CLAUSE.fullmatch(clause)
            if m is None:
                raise InputError(
                    f"cannot read {clause!r} in caption {caption!r}: write clauses like 'a red circle' or "
                    f"'a red circle to the left of a blue square' joined by 'and'; colours {sorted(PALETTE)}, "
                    f"shapes {list(KINDS)}, relations {list(RELATIONS)}"
                )
            i = resolve(m["a1"], m["c1"], m["k1"])
            if m["rel"] is not None:
                j = resolve(m["a2"], m["c2"], m["k2"])
                rel = m["rel"].replace("to the ", "").replace("on the ", "")
                if i == j:
                    raise InputError(f"clause {clause!r} relates an object to itself")
                relations.append((i, rel, j))
        return cls(objects=tuple(objects), relations=tuple(relations))

    def to_dict(self) -> dict:
        return {"objects": [list(o) for o in self.objects], "relations": [list(r) for r in self.relations]}

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        return cls(
            objects=tuple((str(c), str(k)) for c, k in d["objects"]),
            relations=tuple((int(i), str(r), int(j)) for i, r, j in d.get("relations", ())),
        )


def _normalise_text(text: str) -> str:
    text = re.sub(r"[^a-z ]+", " ", str(text).lower())
    return " ".join(text.split())


_COLOUR_RE = "|".join(PALETTE)
_KIND_RE = "|".join(KINDS)
_REL_RE = r"(?:(?:to|on) the )?left of|(?:(?:to|on) the )?right of|above|below"
_CLAUSE = re.compile(
    rf"(?P<a1>a|an|the) (?P<c1>{_COLOUR_RE}) (?P<k1>{_KIND_RE})"
    rf"(?: (?P<rel>{_REL_RE}) (?P<a2>a|an|the) (?P<c2>{_COLOUR_RE}) (?P<k2>{_KIND_RE}))?"
)


@dataclass(frozen=True)
class QAItem:
    """One understanding question with its single-word answer and type (one of :data:`QUESTION_TYPES`, or
    ``"where"`` for the training-only :func:`where_questions`)."""

    question: str
    answer: str
    qtype: str

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "qtype": self.qtype}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, scale: int, fill) -> None:
    """Draw ``shape`` at ``scale`` times its box with ``fill`` (an RGB triple, or a level on an "L" image)."""
    x0, y0, x1, y1 = (v * scale for v in shape.bbox)
    if shape.kind == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape.kind == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2.0, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)


@dataclass(frozen=True)
class Scene:
    """An image's ground truth: its side in pixels, background RGB and shapes (in caption order)."""

    image_size: int
    shapes: tuple[Shape, ...]
    background: tuple[int, int, int] = BACKGROUND
    supersample: int = 4

    def render(self) -> Image.Image:
        """Draw the scene as an RGB ``PIL.Image`` of ``image_size`` x ``image_size``.

        Shapes are drawn ``supersample`` times larger and box-filtered down, which anti-aliases their edges the
        way a decoder's output is soft (``supersample`` 1: hard, aliased edges).
        """
        s = int(self.supersample)
        big = Image.new("RGB", (self.image_size * s, self.image_size * s), tuple(self.background))
        draw = ImageDraw.Draw(big)
        for shape in self.shapes:
            _draw_shape(draw, shape, s, PALETTE[shape.colour])
        if s == 1:
            return big
        return big.resize((self.image_size, self.image_size), Image.Resampling.BOX)

    def patch_labels(self, grid: int, min_cover: float = 0.25) -> tuple[str | None, ...]:
        """What each cell of a ``grid`` x ``grid`` partition of the image shows, row by row from the top left:
        the name (``"red circle"``) of the shape that covers most of the cell if it covers at least ``min_cover``
        of it, else None (the ground). A ViT with ``grid`` patches a side learns these per token
        (:func:`unimm.train.encoder.pretrain_encoder`'s ``patch_labels``). Cover is counted on the hard-edged
        drawing at ``image_size``, each pixel in the cell its centre falls in."""
        if not 1 <= grid <= self.image_size:
            raise InputError(f"grid {grid} must be between 1 and the image side {self.image_size}")
        owner = Image.new("L", (self.image_size, self.image_size), 0)
        draw = ImageDraw.Draw(owner)
        for k, shape in enumerate(self.shapes, start=1):
            _draw_shape(draw, shape, 1, k)
        owner_ids = np.asarray(owner)
        cell = (np.arange(self.image_size) + 0.5) * grid // self.image_size  # each pixel row/column's cell
        labels = []
        for gy in range(grid):
            rows = owner_ids[cell == gy]
            for gx in range(grid):
                block = rows[:, cell == gx]
                counts = np.bincount(block.ravel(), minlength=len(self.shapes) + 1)[1:]
                covered = counts.size and counts.max() >= min_cover * block.size
                labels.append(self.shapes[int(counts.argmax())].name if covered else None)
        return tuple(labels)

    def spec(self) -> Spec:
        """The spec its caption states: every shape, and for each shape after the first its clearest relation to
        the shape before it."""
        relations = []
        for k in range(1, len(self.shapes)):
            rels = relations_between(self.shapes[k - 1].bbox, self.shapes[k].bbox)
            rel, strength = max(rels.items(), key=lambda kv: kv[1], default=(None, 0.0))
            if rel is None or strength < CLEAR_RELATION:
                raise InputError(
                    f"shapes {k - 1} and {k} of this scene have no clear relation; scenes from sample_scene "
                    "always have one"
                )
            # The first clause reads "a A rel a B"; later ones "a C rel the B", so the new shape is the subject.
            relations.append((0, rel, 1) if k == 1 else (k, OPPOSITE[rel], k - 1))
        return Spec(objects=tuple((s.colour, s.kind) for s in self.shapes), relations=tuple(relations))

    @property
    def caption(self) -> str:
        return self.spec().caption()

    def key(self) -> str:
        """Canonical text of what the image shows (shape order ignored); equal keys mean equal images."""
        shapes = sorted((s.kind, s.colour, s.x0, s.y0, s.size) for s in self.shapes)
        return json.dumps([self.image_size, list(self.background), shapes], separators=(",", ":"))

    def to_dict(self) -> dict:
        d = {
            "image_size": self.image_size,
            "background": list(self.background),
            "shapes": [s.to_dict() for s in self.shapes],
        }
        if self.supersample != 4:  # recorded where it differs, so default splits keep their files
            d["supersample"] = self.supersample
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(
            image_size=int(d["image_size"]),
            shapes=tuple(Shape.from_dict(s) for s in d["shapes"]),
            background=tuple(d.get("background", BACKGROUND)),
            supersample=int(d.get("supersample", 4)),
        )


@dataclass(frozen=True)
class Sample:
    """One benchmark item: a scene, the caption and spec to generate it from, and its questions."""

    index: int
    split: str
    scene: Scene
    spec: Spec
    caption: str
    qa: tuple[QAItem, ...]

    def image(self) -> Image.Image:
        """The rendered scene (``PIL.Image``, RGB)."""
        return self.scene.render()

    def plain_image(self) -> Image.Image:
        """The same shapes at the same side on the plain ground, anti-aliased (``ShapesConfig.plain_targets``)."""
        return Scene(self.scene.image_size, self.scene.shapes).render()


# ----------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapesConfig:
    """Knobs of the generator.

    Args:
        image_size: side of the image in pixels (16 to 256; 32 to 64 is the intended range).
        min_shapes, max_shapes: shapes per image (1 <= min <= max <= 6).
        colours: colour names from :data:`PALETTE`.
        kinds: shape kinds from :data:`KINDS`.
        min_size, max_size: shape side as a fraction of ``image_size``.
        min_gap: empty pixels between two shapes' boxes; ``None`` means ``max(1, image_size // 16)``.
        background: background RGB.
        variations: vary, per image and from its own random stream, what should not matter (:data:`VARIATIONS`):
            the side the scene is drawn at (stored at that size; the model's transforms resize it), the shapes'
            size, the background's colour and brightness (one that :func:`separates` from the palette colours: 80
            RGB away from each, edge blends nearest their own colour) and anti-aliasing. Scenes, captions and
            questions keep their meaning.
        plain_targets: with ``variations``, the text-to-image targets are the same scenes drawn on the plain ground
            (:data:`BACKGROUND`, anti-aliased, at the scene's side; :meth:`Sample.plain_image`): a caption says which
            shapes are where, not the ground, so a varied ground would be entropy the prompt cannot control. The
            images to understand stay varied.
        where_questions: add :func:`where_questions` to each sample's questions (for a training split: they are
            tagged ``"where"``, which no score reads).
    """

    image_size: int = 32
    min_shapes: int = 1
    max_shapes: int = 2
    colours: tuple[str, ...] = DEFAULT_COLOURS
    kinds: tuple[str, ...] = KINDS
    min_size: float = 0.25
    max_size: float = 0.4
    min_gap: int | None = None
    background: tuple[int, int, int] = field(default=BACKGROUND)
    variations: bool = False
    plain_targets: bool = False
    where_questions: bool = False

    def __post_init__(self):
        for name in ("variations", "plain_targets", "where_questions"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.plain_targets and not self.variations:
            raise ConfigError("plain_targets: true needs variations: true (without variations every image is plain)")
        if not 16 <= self.image_size <= 256:
            raise ConfigError(f"image_size={self.image_size} is outside 16..256; use e.g. 32 or 64")
        if not 1 <= self.min_shapes <= self.max_shapes <= MAX_SHAPES:
            raise ConfigError(
                f"min_shapes={self.min_shapes}, max_shapes={self.max_shapes}: need 1 <= min_shapes <= max_shapes "
                f"<= {MAX_SHAPES}"
            )
        bad = [c for c in self.colours if c not in PALETTE]
        if bad or not self.colours:
            raise ConfigError(f"unknown colours {bad} (or none given); choose from {sorted(PALETTE)}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ConfigError(f"unknown shape kinds {bad} (or none given); choose from {list(KINDS)}")
        if self.max_shapes > len(self.colours) * len(self.kinds):
            raise ConfigError(
                f"max_shapes={self.max_shapes} but only {len(self.colours) * len(self.kinds)} distinct "
                "(colour, kind) pairs; shapes in one scene are distinct pairs, so add colours or kinds"
            )
        if not 0.0 < self.min_size <= self.max_size <= 0.6:
            raise ConfigError(
                f"min_size={self.min_size}, max_size={self.max_size}: need 0 < min_size <= max_size <= 0.6 "
                "(fractions of image_size)"
            )
        if round(self.min_size * self.image_size) < 6:
            raise ConfigError(
                f"min_size={self.min_size} gives shapes of {round(self.min_size * self.image_size)} px at "
                f"image_size={self.image_size}; shapes under 6 px cannot be told apart, raise min_size"
            )

    @property
    def gap(self) -> int:
        return self.min_gap if self.min_gap is not None else max(1, self.image_size // 16)

    @property
    def size_range(self) -> tuple[int, int]:
        return round(self.min_size * self.image_size), round(self.max_size * self.image_size)

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "min_shapes": self.min_shapes,
            "max_shapes": self.max_shapes,
            "colours": list(self.colours),
            "kinds": list(self.kinds),
            "min_size": self.min_size,
            "max_size": self.max_size,
            "min_gap": self.gap,
            "background": list(self.background),
            **({"variations": VARIATIONS} if self.variations else {}),
            **({"generation_targets": "plain"} if self.plain_targets else {}),
            **({"where_questions": True} if self.where_questions else {}),
        }


class _Draws:
    """Random draws built only on ``random.Random(str).random()``, whose sequence Python keeps across versions
    (``randrange``/``choice``/``shuffle`` have changed between releases, so they are not used)."""

    def __init__(self, key: str):
        self._r = random.Random(key)

    def uniform(self) -> float:
        return self._r.random()

    def integer(self, low: int, high: int) -> int:
        """Uniform integer in ``[low, high]`` (both included)."""
        return low + min(int(self._r.random() * (high - low + 1)), high - low)

    def choice(self, items):
        return items[self.integer(0, len(items) - 1)]

    def sample(self, items, k: int) -> list:
        pool = list(items)
        return [pool.pop(self.integer(0, len(pool) - 1)) for _ in range(k)]


def _separated(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _sample_scene(draws: _Draws, cfg: ShapesConfig) -> Scene:
    n = draws.integer(cfg.min_shapes, cfg.max_shapes)
    pairs = draws.sample([(c, k) for c in cfg.colours for k in cfg.kinds], n)
    lo, hi = cfg.size_range
    margin = 1
    for _ in range(200):
        shapes: list[Shape] = []
        for colour, kind in pairs:
            size = draws.integer(lo, hi)
            for _ in range(50):
                x0 = draws.integer(margin, cfg.image_size - margin - size)
                y0 = draws.integer(margin, cfg.image_size - margin - size)
                cand = Shape(kind=kind, colour=colour, x0=x0, y0=y0, size=size)
                if not all(_separated(cand.bbox, s.bbox, cfg.gap) for s in shapes):
                    continue
                if shapes:
                    rels = relations_between(shapes[-1].bbox, cand.bbox)
                    if max(rels.values(), default=0.0) < CLEAR_RELATION:
                        continue
                shapes.append(cand)
                break
            else:
                break
        if len(shapes) == n:
            return Scene(image_size=cfg.image_size, shapes=tuple(shapes), background=tuple(cfg.background))
        hi = max(lo, hi - 1)  # crowded: try smaller shapes
    raise ConfigError(
        f"could not place {n} shapes of {lo}..{cfg.size_range[1]} px apart in a {cfg.image_size} px image; "
        "lower max_shapes or max_size, or raise image_size"
    )


def split_of(scene: Scene) -> str:
    """The split a scene belongs to, from a SHA-256 of :meth:`Scene.key` (see :data:`SPLIT_BUCKETS`)."""
    bucket = int(hashlib.sha256(scene.key().encode()).hexdigest()[:8], 16) % 100
    for name, buckets in SPLIT_BUCKETS.items():
        if bucket in buckets:
            return name
    raise AssertionError(bucket)  # SPLIT_BUCKETS covers 0..99


def _reference(scene: Scene, i: int) -> str:
    """Shortest unique description of shape ``i``: its kind if no other shape has it, else colour and kind."""
    shape = scene.shapes[i]
    if sum(s.kind == shape.kind for s in scene.shapes) == 1:
        return shape.kind
    return shape.name


def make_questions(scene: Scene, draws: _Draws, cfg: ShapesConfig) -> tuple[QAItem, ...]:
    """One question of each type the scene can answer unambiguously, in :data:`QUESTION_TYPES` order.

    * colour: ``"what colour is the circle?"`` for a kind that occurs once;
    * shape: ``"what shape is the red one?"`` for a colour that occurs once;
    * count: ``"how many shapes are there?"``, ``"how many circles are there?"`` or ``"how many red shapes are
      there?"`` (kinds and colours drawn from the config, so ``"zero"`` occurs);
    * position: ``"is the square to the left of the circle?"`` about a pair with a clear relation, asked as is
      (``"yes"``) or reversed (``"no"``) with equal odds.
    """
    shapes = scene.shapes
    kinds, colours = Counter(s.kind for s in shapes), Counter(s.colour for s in shapes)
    out = []
    unique_kind = [s for s in shapes if kinds[s.kind] == 1]
    if unique_kind:
        s = draws.choice(unique_kind)
        out.append(QAItem(f"what colour is the {s.kind}?", s.colour, "colour"))
    unique_colour = [s for s in shapes if colours[s.colour] == 1]
    if unique_colour:
        s = draws.choice(unique_colour)
        out.append(QAItem(f"what shape is the {s.colour} one?", s.kind, "shape"))
    form = draws.integer(0, 2)
    if form == 0:
        out.append(QAItem("how many shapes are there?", NUMBER_WORDS[len(shapes)], "count"))
    elif form == 1:
        kind = draws.choice(cfg.kinds)
        out.append(QAItem(f"how many {kind}s are there?", NUMBER_WORDS[kinds[kind]], "count"))
    else:
        colour = draws.choice(cfg.colours)
        out.append(QAItem(f"how many {colour} shapes are there?", NUMBER_WORDS[colours[colour]], "count"))
    clear = [
        (i, rel, j)
        for i in range(len(shapes))
        for j in range(len(shapes))
        if i != j
        for rel, strength in relations_between(shapes[i].bbox, shapes[j].bbox).items()
        if strength >= CLEAR_RELATION
    ]
    if clear:
        i, rel, j = draws.choice(clear)
        truth = draws.uniform() < 0.5
        asked = rel if truth else OPPOSITE[rel]
        question = f"is the {_reference(scene, i)} {RELATION_WORDS[asked]} the {_reference(scene, j)}?"
        out.append(QAItem(question, "yes" if truth else "no", "position"))
    return tuple(out)


#: How :func:`where_questions` names the side of the picture a relation points to.
SIDES: dict[str, str] = {"left of": "on the left", "above": "at the top"}


def where_questions(scene: Scene, margin: float = 0.15) -> tuple[QAItem, ...]:
    """Training questions about position whose answer follows from one fact, tagged ``"where"``.

    The benchmark's position question (:func:`make_questions`) asks a relation or its opposite with equal odds,
    so its answer is the exclusive or of two facts (which relation is asked, which way the shapes lie): neither
    alone says anything about it, and training finds no slope to start down (docs/reproduce.md, "Known limits").
    These ask one direction per axis, so that where one shape lies decides the answer:

    * ``"is the circle on the left?"`` / ``"... at the top?"``: the shape's centre against the picture's middle,
      asked when it is at least ``margin`` of the side away from it;
    * ``"is the circle to the left of the square?"`` / ``"... above ..."``: a pair with a clear relation on that
      axis (:data:`CLEAR_RELATION`), both ways round;
    * ``"what shape is on the left?"`` / ``"... at the top?"``: of such a pair of two kinds, the shape there.
    """
    shapes, side = scene.shapes, scene.image_size
    out = []
    for i, shape in enumerate(shapes):
        cx, cy = shape.centre
        for rel, c in (("left of", cx / side), ("above", cy / side)):
            if abs(c - 0.5) >= margin:
                out.append(QAItem(f"is the {_reference(scene, i)} {SIDES[rel]}?", "yes" if c < 0.5 else "no", "where"))
    for i in range(len(shapes)):
        for j in range(len(shapes)):
            if i == j:
                continue
            relations = relations_between(shapes[i].bbox, shapes[j].bbox)
            for rel in SIDES:
                if relations.get(rel, 0.0) >= CLEAR_RELATION:
                    truth = True
                elif relations.get(OPPOSITE[rel], 0.0) >= CLEAR_RELATION:
                    truth = False
                else:
                    continue
                question = f"is the {_reference(scene, i)} {RELATION_WORDS[rel]} the {_reference(scene, j)}?"
                out.append(QAItem(question, "yes" if truth else "no", "where"))
                if truth and len(shapes) == 2 and shapes[i].kind != shapes[j].kind:
                    out.append(QAItem(f"what shape is {SIDES[rel]}?", shapes[i].kind, "where"))
    return tuple(out)


def sample_scene(seed: int | str, config: ShapesConfig | None = None) -> Scene:
    """One scene from its own stream ``seed`` (any split). Deterministic."""
    return _sample_scene(_Draws(f"unimm-shapes/scene/{seed}"), config or ShapesConfig())


#: What ``ShapesConfig(variations=True)`` draws per image (recorded in an exported split's info.json).
VARIATIONS: dict = {
    "render_size": [24, 96],          # side in pixels the scene is drawn and stored at (the model resizes)
    "shape_size": [0.25, 0.55],       # shape side as a fraction of that side
    "background_grey": [20, 215],     # grey level, then a tint of up to +-25 per channel
    "background_tint": 25,
    "background_margin": 80,          # BACKGROUND_MARGIN
    "background_blends": "nearest their own colour or the ground",  # the second condition of separates()
    "antialiased": 0.7,               # probability of supersampling 4 (else hard edges)
    "split_by": "layout",             # a scene's split: the hash of its shapes and side on the plain ground
}

#: RGB distance a varied background keeps from every palette colour in use: the checker gives a pixel the nearest
#: of the palette and the background, so shapes stay separable from the background by a wide margin even at their
#: blended edges (palette colours are 105 or more apart; 80 leaves them nearer their own colour than the ground).
BACKGROUND_MARGIN = VARIATIONS["background_margin"]


def separates(background, colours: tuple[str, ...]) -> bool:
    """Whether the checker's nearest-colour rule can tell shapes of ``colours`` from ``background`` (RGB).

    The checker looks for :data:`DEFAULT_COLOURS` plus the prompt's colours, so those are tested with ``colours``.
    Two conditions: the background is :data:`BACKGROUND_MARGIN` or more from every one of them, and every blend
    of the background with one of them (the anti-aliased or resized edge of a shape, sampled at 1/16 steps) is
    nearest that colour or the background, never a third colour: on a dark ground, yellow's edge pixels are nearer
    green than either, and the checker would find a thin green shape lining the yellow one.
    """
    refs = [tuple(background)] + [PALETTE[c] for c in dict.fromkeys(DEFAULT_COLOURS + tuple(colours))]
    if any(math.dist(refs[0], ref) < BACKGROUND_MARGIN for ref in refs[1:]):
        return False
    for k, colour in enumerate(refs[1:], start=1):
        for step in range(1, 16):
            t = step / 16
            blend = [b + t * (c - b) for b, c in zip(refs[0], colour)]
            nearest = min(range(len(refs)), key=lambda i: math.dist(blend, refs[i]))
            if nearest not in (0, k):
                return False
    return True


def _varied_background(draws: _Draws, colours: tuple[str, ...]) -> tuple[int, int, int]:
    lo, hi = VARIATIONS["background_grey"]
    tint = VARIATIONS["background_tint"]
    for _ in range(1000):
        grey = draws.integer(lo, hi)
        rgb = tuple(min(255, max(0, grey + draws.integer(-tint, tint))) for _ in range(3))
        if separates(rgb, colours):
            return rgb
    raise ConfigError(f"found no background that separates from the colours {list(colours)}")  # pragma: no cover


def varied_config(cfg: ShapesConfig, draws: _Draws) -> tuple[ShapesConfig, int]:
    """The config one varied image is drawn with (its side, shape sizes, background) and its supersampling."""
    size = draws.integer(*VARIATIONS["render_size"])
    low, high = VARIATIONS["shape_size"]
    low = max(low, 6 / size)  # shapes under 6 px cannot be told apart
    scene_cfg = ShapesConfig(image_size=size, min_shapes=cfg.min_shapes, max_shapes=cfg.max_shapes,
                             colours=cfg.colours, kinds=cfg.kinds, min_size=low, max_size=high,
                             background=_varied_background(draws, cfg.colours))
    return scene_cfg, 4 if draws.uniform() < VARIATIONS["antialiased"] else 1


def make_sample(split: str, index: int, seed: int = 0, config: ShapesConfig | None = None) -> Sample:
    """Item ``index`` of split ``split`` (``"train"``, ``"val"`` or ``"test"``); see :func:`make_split`."""
    if split not in SPLIT_BUCKETS:
        raise ConfigError(f"unknown split {split!r}; choose from {list(SPLIT_BUCKETS)}")
    cfg = config or ShapesConfig()
    draws = _Draws(f"unimm-shapes/{seed}/{split}/{index}")
    scene_cfg, supersample = cfg, 4
    if cfg.variations:  # a stream of its own, so the scene's draws are those of a plain split
        scene_cfg, supersample = varied_config(cfg, _Draws(f"unimm-shapes/{seed}/{split}/{index}/look"))
    for _ in range(10_000):
        scene = _sample_scene(draws, scene_cfg)
        # A varied scene's split is that of its layout on the plain ground, so the same shapes at the same size
        # cannot be in train and test with two backgrounds (1 in 1,000 test layouts were, against 20,000 train).
        if split_of(Scene(scene.image_size, scene.shapes) if cfg.variations else scene) == split:
            break
    else:  # pragma: no cover - one in ten scenes lands in the smallest split
        raise ConfigError(f"found no scene for split {split!r}; the config's scene space is too small")
    if supersample != 4:
        scene = Scene(scene.image_size, scene.shapes, scene.background, supersample)
    spec = scene.spec()
    return Sample(
        index=index,
        split=split,
        scene=scene,
        spec=spec,
        caption=spec.caption(),
        qa=make_questions(scene, draws, cfg) + (where_questions(scene) if cfg.where_questions else ()),
    )


def make_split(name: str, n: int, seed: int = 0, config: ShapesConfig | None = None) -> list[Sample]:
    """The first ``n`` samples of split ``name`` for ``seed``.

    Sample ``i`` depends only on ``(seed, name, i, config)``: ``make_split(name, 10)`` is the start of
    ``make_split(name, 1000)``. Scenes of different splits never show the same image (:func:`split_of`);
    captions do repeat across splits (there are only so many ways to say "a red circle").
    """
    if n < 0:
        raise ConfigError(f"n={n}: the number of samples cannot be negative")
    return [make_sample(name, i, seed, config) for i in range(n)]
