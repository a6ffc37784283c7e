"""Package discovery for setuptools; every other setting is in pyproject.toml.

The top-level ``adapters/`` folder ships as ``prunedata.adapters`` (``package-dir`` in
pyproject.toml). setuptools' ``find`` directive names packages after their folders, so it cannot
discover a re-mapped tree; this file finds every package under ``prunedata/`` and ``adapters/`` so
that a new sub-package ships without editing a list.
"""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["prunedata", "prunedata.*"])
      + ["prunedata.adapters"] + [f"prunedata.adapters.{p}" for p in find_packages("adapters")])
