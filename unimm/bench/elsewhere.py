"""The "drawn elsewhere" test set: the benchmark's test scenes drawn by another method, to score apart.

A model that learned the renderer of :mod:`unimm.bench.shapes` rather than the shapes would fail here. Each item
takes a test-split scene (the same spec, caption and questions, so the answers mean the same) and draws it the way
another program would:

* on a canvas of another size (40 to 128 px), with PIL's primitives straight onto it - no supersampling, so
  edges are hard and rounded differently; the model's transforms resize the stored picture as they would a photo;
* on a light or mid grey, or lightly tinted, background (grey 110-190, one that
  :func:`unimm.bench.shapes.separates` from the colours in use), never the benchmark's own grey;
* circles as PIL ellipses of the scaled box, triangles as polygons with the apex at the scaled box's top centre,
  each with a 1-pixel outline a little darker than its fill.

Items are deterministic in ``(seed, index)``; :func:`make_elsewhere` returns :class:`unimm.bench.shapes.Sample`
objects whose ``image()`` draws this way, so :func:`unimm.bench.export.export_samples` writes them like any split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw

from unimm.registry import ConfigError

from .shapes import BACKGROUND, PALETTE, Sample, Scene, Shape, ShapesConfig, _Draws, make_sample, separates

METHOD = ("PIL primitives straight onto a 40-128 px canvas (no supersampling), 1 px darker outlines, "
          "grey 110-190 or tinted backgrounds")
CANVAS = (40, 128)
GREY = (110, 190)
TINT = 15

#: How the set is drawn, recorded in an exported split's info.json as ``"drawing"`` (next to ``"method"``).
DRAWING: dict = {
    "scenes": "the test split's scenes of the same seed, boxes scaled to the canvas",
    "canvas": list(CANVAS),
    "background_grey": list(GREY),
    "background_tint": TINT,          # on half the images, per channel
    "supersample": 1,
    "outline": "1 px, 0.85 x the fill",
}


@dataclass(frozen=True)
class DrawnElsewhere(Sample):
    """A test-scene sample drawn by :func:`draw_plain` instead of :meth:`Scene.render`."""

    def image(self) -> Image.Image:
        return draw_plain(self.scene)


def draw_plain(scene: Scene) -> Image.Image:
    """The scene drawn with PIL primitives at its own size, hard edges, darker 1-px outlines."""
    image = Image.new("RGB", (scene.image_size, scene.image_size), tuple(scene.background))
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        x0, y0, x1, y1 = shape.bbox
        fill = PALETTE[shape.colour]
        edge = tuple(max(0, int(c * 0.85)) for c in fill)
        box = (x0, y0, x1 - 1, y1 - 1)
        if shape.kind == "circle":
            draw.ellipse(box, fill=fill, outline=edge)
        elif shape.kind == "square":
            draw.rectangle(box, fill=fill, outline=edge)
        else:
            draw.polygon([((x0 + x1 - 1) / 2.0, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill, outline=edge)
    return image


def _background(draws: _Draws, colours) -> tuple[int, int, int]:
    for _ in range(1000):
        grey = draws.integer(*GREY)
        tint = [draws.integer(-TINT, TINT) for _ in range(3)] if draws.uniform() < 0.5 else [0, 0, 0]
        rgb = tuple(min(255, max(0, grey + t)) for t in tint)
        if math.dist(rgb, BACKGROUND) >= 20 and separates(rgb, colours):
            return rgb
    raise ConfigError(f"found no background that separates from the colours {list(colours)}")  # pragma: no cover


def make_elsewhere_sample(index: int, seed: int = 0, config: ShapesConfig | None = None) -> DrawnElsewhere:
    """Item ``index``: test scene ``index`` of ``seed`` (plain renderer's scene space) redrawn on another canvas."""
    cfg = config or ShapesConfig()
    if cfg.variations:
        raise ConfigError("the drawn-elsewhere set varies its own drawing; give a config without variations "
                          "(drop --variations)")
    base = make_sample("test", index, seed, cfg)
    draws = _Draws(f"unimm-shapes/{seed}/elsewhere/{index}")
    canvas = draws.integer(*CANVAS)
    scale = canvas / base.scene.image_size
    shapes = tuple(Shape(kind=s.kind, colour=s.colour, x0=round(s.x0 * scale), y0=round(s.y0 * scale),
                         size=max(1, round(s.size * scale))) for s in base.scene.shapes)
    scene = Scene(canvas, shapes, _background(draws, cfg.colours), supersample=1)
    return DrawnElsewhere(index=index, split="elsewhere", scene=scene, spec=base.spec, caption=base.caption,
                          qa=base.qa)


def make_elsewhere(n: int, seed: int = 0, config: ShapesConfig | None = None) -> list[DrawnElsewhere]:
    """The first ``n`` drawn-elsewhere items for ``seed``."""
    if n < 0:
        raise ConfigError(f"n={n}: the number of samples cannot be negative")
    return [make_elsewhere_sample(i, seed, config) for i in range(n)]
