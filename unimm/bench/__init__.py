"""A laptop-scale benchmark for unified multimodal models.

* :mod:`unimm.bench.shapes`: seeded synthetic scenes (coloured circles, squares, triangles), captions for
  text-to-image and typed question/answer pairs for understanding, in fixed disjoint splits;
* :mod:`unimm.bench.checker`: a programmatic, GenEval-style checker that finds the shapes in pixels and scores
  generated images against their prompts, and exact-match scoring of answers;
* :mod:`unimm.bench.export`: writes a split as ``images/`` + ``t2i.jsonl`` / ``und.jsonl`` / ``spec.jsonl``;
* :mod:`unimm.bench.evaluate`: scores a model on an exported split (``unimm bench evaluate``).

The experiments that train models and score them on it live in :mod:`unimm.experiments` (``unimm reproduce``).
"""

from .checker import (
    Detection,
    detect_shapes,
    evaluate_generation,
    evaluate_understanding,
    normalise_answer,
    score_generation,
)
from .export import export_main, export_samples, export_split, load_specs, read_jsonl
from .shapes import (
    ANSWER_VOCAB,
    DEFAULT_COLOURS,
    KINDS,
    PALETTE,
    QUESTION_TYPES,
    RELATIONS,
    QAItem,
    Sample,
    Scene,
    Shape,
    ShapesConfig,
    Spec,
    make_sample,
    make_split,
    relations_between,
    sample_scene,
    split_of,
)

__all__ = [
    "ANSWER_VOCAB",
    "DEFAULT_COLOURS",
    "KINDS",
    "PALETTE",
    "QUESTION_TYPES",
    "RELATIONS",
    "Detection",
    "QAItem",
    "Sample",
    "Scene",
    "Shape",
    "ShapesConfig",
    "Spec",
    "detect_shapes",
    "evaluate_generation",
    "evaluate_understanding",
    "export_main",
    "export_samples",
    "export_split",
    "load_specs",
    "make_sample",
    "make_split",
    "normalise_answer",
    "read_jsonl",
    "relations_between",
    "sample_scene",
    "score_generation",
    "split_of",
]
