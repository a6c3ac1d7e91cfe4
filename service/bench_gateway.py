"""Moved to `engines/bench/gateway_overhead.py`: every benchmark now lives in `engines/bench/` (run it as `realiz3d bench gateway-overhead`).

This module only re-exports it, so imports of the old name keep working while other work lands.
"""

from engines.bench.gateway_overhead import *  # noqa: F403
from engines.bench.gateway_overhead import _free_port, _local_stack, _wait  # noqa: F401 - names imported elsewhere
