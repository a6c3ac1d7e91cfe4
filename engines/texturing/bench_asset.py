"""Moved to `engines/bench/texturing_asset.py`: every benchmark now lives in `engines/bench/` (run it as `realiz3d bench geometry`).

This module only re-exports it, so imports of the old name keep working while other work lands.
"""

from engines.bench.texturing_asset import *  # noqa: F403
