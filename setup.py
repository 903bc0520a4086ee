"""Packages: curate/ plus the top-level schemas/ folder, shipped inside the wheel as curate/schemas
(where curate.schema finds the versioned declarations). Everything else is in pyproject.toml."""
from setuptools import find_namespace_packages, setup

setup(
    packages=find_namespace_packages(include=["curate", "curate.*"], exclude=["curate.*.__pycache__"]) + ["curate.schemas"],
    package_dir={"curate.schemas": "schemas"},
)
