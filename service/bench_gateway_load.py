"""Moved to `engines/bench/gateway.py`: every benchmark now lives in `engines/bench/` (run it as `realiz3d bench gateway`).

This module only re-exports it, so imports of the old name keep working while other work lands.
"""

from engines.bench.gateway import *  # noqa: F403
