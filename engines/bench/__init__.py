"""Benchmarks that drive whole pipelines and runners (figures go to docs/benchmarks/; never tests)."""
