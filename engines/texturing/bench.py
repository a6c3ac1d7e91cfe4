"""Moved to `engines/bench/geometry.py`: every benchmark now lives in `engines/bench/` (run it as `realiz3d bench geometry`).

This module only re-exports it, so imports of the old name keep working while other work lands.
"""

from engines.bench.geometry import *  # noqa: F403

if __name__ == "__main__":
    from engines.bench.geometry import main

    raise SystemExit(main())
