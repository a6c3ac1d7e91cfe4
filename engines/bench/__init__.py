"""Benchmarks that drive whole pipelines and runners (figures go to docs/benchmarks/; never tests)."""

from pathlib import Path

#: where every benchmark writes its report unless told otherwise (`realiz3d bench ... --out`)
OUT_DIR = Path("docs/benchmarks")
