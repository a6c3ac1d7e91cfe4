"""Folders written whole or not at all: model folders, checkpoints, data sets.

`replaced_folder(target)` yields an empty temp folder beside `target`. When the block ends normally the
temp folder takes `target`'s place (an old `target` is moved aside first and then removed, so a reader
finds either the old folder or the new one, never half of one); when it raises, the temp folder is
removed and `target` is as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_folder(target: str | Path) -> Iterator[Path]:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            # an empty folder of a fresh name: renaming onto it replaces it (POSIX), whatever was left before
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
