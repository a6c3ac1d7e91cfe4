"""The CLI's progress bar for denoising steps (generate, texture) and texturing's stages."""

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
                if self.bar.total != total or self.bar.desc != self.desc:
                    self.bar.reset(total=total)
                    self.bar.set_description_str(self.desc, refresh=False)
                self.bar.n = step
                self.bar.refresh()

        return update

    def stage(self, name: str, fraction: float) -> None:
        """A texturing stage started or moved on: the bar shows it (the unwrap in percent) until the
        denoising steps take the bar back."""
        if self.bar is None or name == "generate":
            return
        if self.bar.desc != name or self.bar.total != 100:
            self.bar.reset(total=100)
            self.bar.set_description_str(name, refresh=False)
        self.bar.n = round(100 * fraction)
        self.bar.refresh()

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
