"""Programmatic checker for the synthetic shapes benchmark: find shapes in pixels, score prompts and answers.

Text-to-image is scored in the spirit of GenEval (Ghosh et al., 2023): detect the objects in the generated image,
then check the prompt's requirements one by one. GenEval detects with a learned detector; here the world is simple
enough to read from pixels, so there is no learned judge:

1. every pixel takes the nearest of the palette colours and the background (estimated from the image border),
   and stays background when even the nearest colour is farther than ``max_distance``;
2. 8-connected regions of one colour become candidate shapes; regions smaller than ``min_area`` (blur fringes,
   noise) are dropped;
3. a region's kind is the ideal shape (circle, square, triangle pointing up, down, left or right) that, sized and
   placed from the region's soft coverage and blurred as much as the region is, overlaps it best (soft
   intersection over union; :func:`fit_shape`), or ``"unknown"`` when none reaches ``min_kind_score``.

:func:`score_generation` checks count, colours, kinds, colour-kind binding and relations (the same geometric
rule, :func:`unimm.bench.shapes.relations_between`, that decides the ground truth). Understanding answers are
scored by exact match after normalising case, punctuation and spacing (:func:`evaluate_understanding`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from unimm.registry import InputError

from .shapes import DEFAULT_COLOURS, KINDS, PALETTE, QAItem, Sample, Scene, Spec, box_centre, relations_between

CATEGORIES: tuple[str, ...] = ("count", "colour", "shape", "binding", "position")


@dataclass(frozen=True)
class Detection:
    """A shape found in an image.

    Attributes:
        colour: palette colour name.
        kind: ``"circle"``, ``"square"``, ``"triangle"`` or ``"unknown"``.
        bbox: ``(x0, y0, x1, y1)`` in pixels (floats), the box of the fitted ideal shape (see :func:`fit_shape`).
        area: pixels in the connected region of that colour.
        score: soft intersection over union of the region with the fitted shape (in [0, 1]).
    """

    colour: str
    kind: str
    bbox: tuple[float, float, float, float]
    area: int
    score: float

    @property
    def centre(self) -> tuple[float, float]:
        return box_centre(self.bbox)

    def to_dict(self) -> dict:
        return {"colour": self.colour, "kind": self.kind, "bbox": [round(v, 2) for v in self.bbox], "area": self.area,
                "score": round(self.score, 4)}


# ----------------------------------------------------------------------------------------------------------------
# Pixels
# ----------------------------------------------------------------------------------------------------------------


def to_rgb_array(image, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Any single image as a float32 ``(H, W, 3)`` array with values in 0..255.

    Accepts a ``PIL.Image``, a path to an image file, or an array / torch tensor shaped ``(H, W, 3)`` or
    ``(3, H, W)``. Integer arrays are read as 0..255; float arrays and tensors as ``value_range`` (give
    ``(-1, 1)`` for the output of a generation path's ``sample``).
    """
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float32)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if hasattr(image, "detach"):  # a torch tensor; torch is not needed otherwise
        image = image.detach().float().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise InputError(
            f"expected one RGB image shaped (H, W, 3) or (3, H, W), got shape {tuple(arr.shape)}; "
            "pass images one at a time (or a batch to evaluate_generation)"
        )
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32)
    lo, hi = float(value_range[0]), float(value_range[1])
    tol = 1e-3 * (hi - lo)
    if arr.size and (arr.min() < lo - tol or arr.max() > hi + tol):
        raise InputError(
            f"float image values span [{arr.min():.3f}, {arr.max():.3f}] but value_range is ({lo}, {hi}); "
            "pass value_range=(-1, 1) for outputs in [-1, 1], or clamp the image first"
        )
    return ((np.clip(arr, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.float32)


_NEIGHBOURS_8 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
_NEIGHBOURS_4 = [(-1, 0), (1, 0), (0, -1), (0, 1)]


def label_components(classes: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """Connected regions of equal non-zero class.

    Written here because neither numpy nor PIL has connected components and scipy is not a dependency; at
    benchmark sizes (<= 256 px) min-label propagation with pointer jumping needs a handful of array passes.

    Args:
        classes: ``(H, W)`` integer map, 0 = background.
        connectivity: 8 (diagonal neighbours join) or 4.

    Returns:
        ``(H, W)`` int map: 0 for background, otherwise ``1 +`` the smallest flat index in the region.
    """
    if connectivity not in (4, 8):
        raise InputError(f"connectivity={connectivity}: use 8 (diagonal neighbours join) or 4")
    h, w = classes.shape
    big = h * w
    fg = classes > 0
    lab = np.where(fg, np.arange(big).reshape(h, w), big)
    cls_pad = np.pad(classes, 1, constant_values=0)
    shifts = _NEIGHBOURS_8 if connectivity == 8 else _NEIGHBOURS_4
    same = [fg & (cls_pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] == classes) for dy, dx in shifts]
    lab_pad = np.full((h + 2, w + 2), big)
    while True:
        lab_pad[1:-1, 1:-1] = lab
        new = lab
        for (dy, dx), ok in zip(shifts, same):
            new = np.where(ok, np.minimum(new, lab_pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]), new)
        flat = new.ravel().copy()
        inside = flat < big
        for _ in range(4):  # pointer jumping: a pixel's label is a pixel of the same region
            flat[inside] = flat[flat[inside]]
        new = flat.reshape(h, w)
        if np.array_equal(new, lab):
            break
        lab = new
    return np.where(fg, lab + 1, 0)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Grow a boolean mask by ``steps`` pixels (square neighbourhood)."""
    h, w = mask.shape
    pad = np.zeros((h + 2 * steps, w + 2 * steps), dtype=bool)
    pad[steps : steps + h, steps : steps + w] = mask
    rows = np.zeros((h + 2 * steps, w), dtype=bool)
    for dx in range(2 * steps + 1):
        rows |= pad[:, dx : dx + w]
    out = np.zeros((h, w), dtype=bool)
    for dy in range(2 * steps + 1):
        out |= rows[dy : dy + h]
    return out


def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """``(n, n)`` matrix that blurs a length-``n`` signal with a Gaussian (zero outside), mass kept."""
    if sigma < 1e-3:
        return np.eye(n)
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    full = np.exp(-0.5 * (np.arange(-n, n + 1) / sigma) ** 2).sum()  # discrete kernel's mass, for small sigma
    return np.exp(-0.5 * (d / sigma) ** 2) / full


# Each hypothesis: (kind, inside test on coordinates (u, v) in the unit box, centroid of the shape in that box,
# variances (x, y) of the shape per unit side squared).
_HYPOTHESES = (
    ("circle", lambda u, v: (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25, (0.5, 0.5), (1 / 16, 1 / 16), np.pi / 4),
    ("square", lambda u, v: np.ones_like(u, dtype=bool), (0.5, 0.5), (1 / 12, 1 / 12), 1.0),
    ("triangle", lambda u, v: np.abs(u - 0.5) <= v / 2, (0.5, 2 / 3), (1 / 24, 1 / 18), 0.5),  # apex up
    ("triangle", lambda u, v: np.abs(u - 0.5) <= (1 - v) / 2, (0.5, 1 / 3), (1 / 24, 1 / 18), 0.5),  # apex down
    ("triangle", lambda u, v: np.abs(v - 0.5) <= u / 2, (2 / 3, 0.5), (1 / 18, 1 / 24), 0.5),  # apex left
    ("triangle", lambda u, v: np.abs(v - 0.5) <= (1 - u) / 2, (1 / 3, 0.5), (1 / 18, 1 / 24), 0.5),  # apex right
)


def fit_shape(alpha: np.ndarray) -> tuple[str, float, tuple[float, float, float, float]]:
    """Which ideal shape, drawn and blurred, best explains a soft mask.

    The mask's mass, centroid and spread fix, for each kind (a circle, a square, a triangle pointing up, down,
    left or right), the side of the shape, its box and the blur that turns its spread into the measured one;
    each hypothesis is drawn with 4 x 4 sub-pixel coverage, blurred, and compared with the mask by soft
    intersection over union. Mass, centroid and spread survive blur, so this reads a blurred 8 px triangle that a
    thresholded mask turns into a blob.

    Args:
        alpha: ``(h, w)`` coverage of one region, about 0 outside and 1 inside.

    Returns:
        ``(kind, iou, box)``: the best hypothesis, its soft IoU and its box ``(x0, y0, x1, y1)`` in ``alpha``'s
        pixel coordinates (floats).
    """
    h, w = alpha.shape
    mass = float(alpha.sum())
    if mass <= 0:
        return "unknown", 0.0, (0.0, 0.0, 0.0, 0.0)
    ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
    cy = float((alpha.sum(axis=1) * ys).sum() / mass)
    cx = float((alpha.sum(axis=0) * xs).sum() / mass)
    var_y = float((alpha.sum(axis=1) * (ys - cy) ** 2).sum() / mass)
    var_x = float((alpha.sum(axis=0) * (xs - cx) ** 2).sum() / mass)
    ss = 4
    sub_y = (np.arange(h * ss) + 0.5) / ss
    sub_x = (np.arange(w * ss) + 0.5) / ss
    gy, gx = np.meshgrid(sub_y, sub_x, indexing="ij")
    target = np.clip(alpha, 0.0, 1.0)
    best = ("unknown", 0.0, (0.0, 0.0, 0.0, 0.0))
    for kind, inside, (ux, uy), (vx, vy), fill in _HYPOTHESES:
        side = float(np.sqrt(mass / fill))
        x0, y0 = cx - ux * side, cy - uy * side
        cover = inside((gx - x0) / side, (gy - y0) / side) & (gx >= x0) & (gx <= x0 + side)
        cover &= (gy >= y0) & (gy <= y0 + side)
        cover = cover.reshape(h, ss, w, ss).mean(axis=(1, 3))
        blur2 = 0.5 * ((var_x - vx * side**2) + (var_y - vy * side**2))
        sigma = float(np.sqrt(np.clip(blur2, 0.0, (0.2 * side) ** 2)))
        model = _gaussian_matrix(h, sigma) @ cover @ _gaussian_matrix(w, sigma).T
        iou = float(np.minimum(target, model).sum() / np.maximum(target, model).sum())
        if iou > best[1]:
            best = (kind, iou, (x0, y0, x0 + side, y0 + side))
    return best


def detect_shapes(
    image,
    colours: tuple[str, ...] = DEFAULT_COLOURS,
    *,
    background: tuple[int, int, int] | None = None,
    max_distance: float = 110.0,
    min_area: float | None = None,
    min_kind_score: float = 0.55,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> list[Detection]:
    """Find the coloured shapes in one image.

    Args:
        image: see :func:`to_rgb_array`.
        colours: palette colour names to look for (those the generator used).
        background: background RGB; ``None`` takes the median of the image's border pixels.
        max_distance: RGB distance (0..255 units) beyond which a pixel belongs to no colour.
        min_area: smallest region kept, in pixels; ``None`` means ``max(4, 1.2%`` of the image).
        min_kind_score: fitted-shape IoU below which a region's kind is ``"unknown"``.
        value_range: range of float inputs.

    Returns:
        Detections sorted by centre, top-to-bottom (to the pixel), then left-to-right.
    """
    bad = [c for c in colours if c not in PALETTE]
    if bad:
        raise InputError(f"unknown colours {bad}; choose from {sorted(PALETTE)}")
    rgb = to_rgb_array(image, value_range)
    h, w, _ = rgb.shape
    if background is None:
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
        bg = np.median(border, axis=0)
    else:
        bg = np.asarray(background, dtype=np.float32)
    refs = np.stack([bg] + [np.asarray(PALETTE[c], dtype=np.float32) for c in colours])
    dist = np.linalg.norm(rgb[:, :, None, :] - refs[None, None], axis=-1)
    classes = dist.argmin(axis=-1)
    classes[dist.min(axis=-1) > max_distance] = 0
    labels = label_components(classes)
    min_area = max(4.0, 0.012 * h * w) if min_area is None else float(min_area)

    found = []
    sizes = np.bincount(labels.ravel())
    for lab in np.flatnonzero(sizes[1:] >= min_area) + 1:
        region = labels == lab
        area = int(sizes[lab])
        colour = colours[int(classes.flat[lab - 1]) - 1]
        # Soft coverage around the region: where each pixel lies between the background and the colour. Blur
        # fringes reach about two pixels past the region; other shapes' pixels are not this region's.
        support = _dilate(region, 2) & ~((labels > 0) & ~region)
        sy, sx = np.nonzero(support)
        wy0, wy1, wx0, wx1 = sy.min(), sy.max() + 1, sx.min(), sx.max() + 1
        ref = np.asarray(PALETTE[colour], dtype=np.float32) - bg
        alpha = ((rgb[wy0:wy1, wx0:wx1] - bg) @ ref) / float(ref @ ref)
        alpha = np.clip(alpha, -0.25, 1.25) * support[wy0:wy1, wx0:wx1]
        kind, score, (bx0, by0, bx1, by1) = fit_shape(alpha)
        if score < min_kind_score:
            kind = "unknown"
        box = (float(bx0 + wx0), float(by0 + wy0), float(bx1 + wx0), float(by1 + wy0))
        found.append(Detection(colour, kind, box, area, score))
    return sorted(found, key=lambda d: (round(d.centre[1]), d.centre[0]))


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


def as_spec(target) -> Spec:
    """A :class:`Spec` from a Spec, a Scene, a Sample, a spec dict or a caption."""
    if isinstance(target, Spec):
        return target
    if isinstance(target, Sample):
        return target.spec
    if isinstance(target, Scene):
        return target.spec()
    if isinstance(target, dict):
        return Spec.from_dict(target.get("spec", target))
    if isinstance(target, str):
        return Spec.parse(target)
    raise InputError(
        f"cannot read a prompt from {type(target).__name__}: pass a Spec, Scene, Sample, spec dict or caption"
    )


def _contains(have: Counter, need: Counter) -> bool:
    return all(have[k] >= v for k, v in need.items())


def score_generation(image, prompt_or_scene, colours: tuple[str, ...] | None = None, **detect_options) -> dict:
    """Check one generated image against the prompt it was made from.

    Requirements (each ``True``/``False``):

    * ``count``: as many shapes as the prompt names;
    * ``colour``: every colour the prompt names is present (as many times as named);
    * ``shape``: every kind the prompt names is present (as many times as named);
    * ``binding``: each named object is a distinct detection of that colour *and* kind;
    * ``position``: every stated relation holds between the objects' detections (``None`` when the prompt
      states no relation; ``False`` when an object was not found);
    * ``overall``: all of the above that apply.

    Args:
        image: the generated image (see :func:`to_rgb_array`).
        prompt_or_scene: a :class:`Spec`, :class:`Scene`, :class:`Sample`, spec dict or caption text.
        colours: palette to detect; ``None`` means the default colours plus any the prompt names.
        **detect_options: passed to :func:`detect_shapes`.

    Returns:
        the requirements above plus ``detections`` (list of dicts) and ``caption``.
    """
    spec = as_spec(prompt_or_scene)
    if colours is None:
        colours = tuple(dict.fromkeys(DEFAULT_COLOURS + tuple(c for c, _ in spec.objects)))
    dets = detect_shapes(image, colours, **detect_options)
    result = {
        "count": len(dets) == len(spec.objects),
        "colour": _contains(Counter(d.colour for d in dets), Counter(c for c, _ in spec.objects)),
        "shape": _contains(Counter(d.kind for d in dets), Counter(k for _, k in spec.objects)),
        "binding": _contains(Counter((d.colour, d.kind) for d in dets), Counter(spec.objects)),
    }
    # Bind each object to the largest unused detection of its colour and kind, then test the relations on them.
    unused = sorted(dets, key=lambda d: -d.area)
    bound: list[Detection | None] = []
    for colour, kind in spec.objects:
        match = next((d for d in unused if d.colour == colour and d.kind == kind), None)
        if match is not None:
            unused.remove(match)
        bound.append(match)
    if spec.relations:
        result["position"] = all(
            bound[i] is not None and bound[j] is not None and rel in relations_between(bound[i].bbox, bound[j].bbox)
            for i, rel, j in spec.relations
        )
    else:
        result["position"] = None
    result["overall"] = all(v for v in result.values() if v is not None)
    result["detections"] = [d.to_dict() for d in dets]
    result["caption"] = spec.caption()
    return result


def evaluate_generation(images, specs, **score_options) -> dict:
    """Score a set of generated images against their prompts.

    Args:
        images: a sequence of images (PIL, arrays, paths, or a ``(B, 3, H, W)`` tensor / array batch).
        specs: one prompt per image (anything :func:`score_generation` takes).
        **score_options: passed to :func:`score_generation` (e.g. ``value_range=(-1, 1)``).

    Returns:
        ``{"n", "accuracy": {category: fraction}, "support": {category: items it applies to},
        "by_objects": {number of objects: overall accuracy}, "items": [per-image results]}``; categories are
        ``overall`` and :data:`CATEGORIES` (``position`` counts only prompts with relations).
    """
    specs = list(specs)
    if not hasattr(images, "__len__"):
        images = list(images)
    if len(images) != len(specs):
        raise InputError(f"{len(images)} images but {len(specs)} prompts; give one prompt per image")
    items = [score_generation(image, spec, **score_options) for image, spec in zip(images, specs)]
    accuracy, support = {}, {}
    for cat in ("overall",) + CATEGORIES:
        values = [it[cat] for it in items if it[cat] is not None]
        support[cat] = len(values)
        accuracy[cat] = float(np.mean(values)) if values else float("nan")
    by_objects: dict[int, list[bool]] = {}
    for spec, it in zip(specs, items):
        by_objects.setdefault(len(as_spec(spec).objects), []).append(it["overall"])
    return {
        "n": len(items),
        "accuracy": accuracy,
        "support": support,
        "by_objects": {k: float(np.mean(v)) for k, v in sorted(by_objects.items())},
        "items": items,
    }


# ----------------------------------------------------------------------------------------------------------------
# Understanding
# ----------------------------------------------------------------------------------------------------------------


def normalise_answer(text: str) -> str:
    """Lower case, punctuation to spaces, runs of spaces to one: ``" Red. "`` -> ``"red"``."""
    kept = "".join(ch if ch.isalnum() else " " for ch in str(text).lower())
    return " ".join(kept.split())


def _answer_and_type(item) -> tuple[str, str]:
    if isinstance(item, QAItem):
        return item.answer, item.qtype
    if isinstance(item, dict):
        qtype = item.get("qtype")
        if "answer" in item:
            return str(item["answer"]), str(qtype)
        turns = [t for t in item.get("conversations", []) if t.get("role") == "assistant"]
        if turns:
            return str(turns[-1]["content"]), str(qtype)
    raise InputError(
        f"cannot read an answer from {item!r}: pass QAItem objects, dicts with 'answer' and 'qtype', or und.jsonl "
        "records (with 'conversations' and 'qtype')"
    )


def evaluate_understanding(predictions, qa_items) -> dict:
    """Exact-match accuracy of predicted answers, overall and per question type.

    Args:
        predictions: one answer string per question.
        qa_items: :class:`QAItem` objects, dicts with ``answer``/``qtype``, or ``und.jsonl`` records.

    Returns:
        ``{"n", "accuracy": {"overall", <qtype>: fraction}, "support": {...: count}, "correct": [bool]}``.
    """
    predictions, qa_items = list(predictions), list(qa_items)
    if len(predictions) != len(qa_items):
        raise InputError(f"{len(predictions)} predictions but {len(qa_items)} questions; give one answer each")
    truths = [_answer_and_type(q) for q in qa_items]
    correct = [normalise_answer(p) == normalise_answer(a) for p, (a, _) in zip(predictions, truths)]
    groups: dict[str, list[bool]] = {"overall": correct}
    for ok, (_, qtype) in zip(correct, truths):
        groups.setdefault(qtype, []).append(ok)
    return {
        "n": len(correct),
        "accuracy": {k: (float(np.mean(v)) if v else float("nan")) for k, v in groups.items()},
        "support": {k: len(v) for k, v in groups.items()},
        "correct": correct,
    }


__all__ = [
    "CATEGORIES",
    "KINDS",
    "Detection",
    "as_spec",
    "fit_shape",
    "detect_shapes",
    "evaluate_generation",
    "evaluate_understanding",
    "label_components",
    "normalise_answer",
    "score_generation",
    "to_rgb_array",
]
