"""Moved to `engines/bench/throughput.py`: every benchmark now lives in `engines/bench/` (run it as `realiz3d bench throughput`).

This module only re-exports it, so imports of the old name keep working while other work lands.
"""

from engines.bench.throughput import *  # noqa: F403
