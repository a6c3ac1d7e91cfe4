"""Another tenant's steady load, made on purpose: `busy_cores(n)` runs n busy-loop processes while a
benchmark measures (`realiz3d bench eta --busy-cores N`). A shared machine's load comes and goes; this
one holds still, so a figure measured under it can be measured again."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: what each busy process runs: one core's worth of pure Python, no memory, no I/O
BUSY_LOOP = "while True:\n    pass\n"


@contextmanager
def busy_cores(n: int) -> Iterator[list[subprocess.Popen]]:
    """n processes spinning on a core each for the duration of the block (none for n = 0); killed and
    reaped on the way out, whatever ends the block."""
    if n < 0:
        raise ValueError(f"busy cores must be 0 or more, not {n}")
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL))
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(10)
