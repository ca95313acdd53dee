"""Packaging that pyproject.toml cannot say: the repository's top-level ``configs/`` folder ships inside the package
as ``unimm/configs`` (found at run time by :data:`unimm.config.CONFIG_DIR`), so a wheel install has the configs.

Data folders (``unimm/assets/...``, ``configs/...``) are listed as namespace packages, as setuptools asks, so that
their files are package data without a warning per folder.
"""

from setuptools import find_namespace_packages, setup

code_and_assets = find_namespace_packages(include=["unimm", "unimm.*"], exclude=["*__pycache__*"])
configs = ["unimm.configs", *(f"unimm.configs.{name}" for name in find_namespace_packages(where="configs"))]

setup(packages=[*code_and_assets, *configs], package_dir={"unimm.configs": "configs"})
