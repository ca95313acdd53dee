"""Experiments that train several models and compare them on the shapes benchmark (:mod:`unimm.bench`).

* :mod:`unimm.experiments.reproduce`: the Janus vs JanusFlow comparisons at laptop scale (``unimm reproduce``,
  docs/reproduce.md), driven by an experiments file such as ``configs/experiments/shapes.yaml``.
* :mod:`unimm.experiments.stats`: intervals over seeds (t, two-level bootstrap) and a verdict per paper claim.
"""
