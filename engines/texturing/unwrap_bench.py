"""Moved to `engines/bench/unwrap.py`: every benchmark now lives in `engines/bench/` (run it as `realiz3d bench unwrap`).

This module only re-exports it, so imports of the old name keep working while other work lands.
"""

from engines.bench.unwrap import *  # noqa: F403

if __name__ == "__main__":
    from engines.bench.unwrap import main

    raise SystemExit(main())
