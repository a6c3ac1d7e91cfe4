"""Moved to `engines/bench/loadtest.py`: every benchmark now lives in `engines/bench/` (run it as `realiz3d loadtest URL`).

This module only re-exports it, so imports of the old name keep working while other work lands.
"""

from engines.bench.loadtest import *  # noqa: F403
