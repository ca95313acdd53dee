"""Sampling for external benchmarks: each module writes a benchmark's expected layout for its own scorer.

* :mod:`unimm.eval.geneval`: GenEval (Ghosh et al. 2023), ``unimm eval geneval``.

A benchmark is a module with a ``read_prompts``-style input check (before any model is loaded) and a function
that samples into the benchmark's folder layout; ``unimm eval NAME`` is one subcommand per module (unimm/cli.py).
"""
