"""The CLI's progress bar for denoising steps (generate, texture)."""

from __future__ import annotations

import sys


class progress_bar:
    """A tqdm bar on a terminal, silent otherwise; yields an `update(step, total)` callback (a total that
    changes, e.g. texturing's passes, resets the bar)."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.bar = total, desc, None

    def __enter__(self):
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, unit="step", leave=False)

        def update(step: int, total: int) -> None:
            if self.bar is not None:
                if self.bar.total != total:
                    self.bar.reset(total=total)
                self.bar.n = step
                self.bar.refresh()

        return update

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
