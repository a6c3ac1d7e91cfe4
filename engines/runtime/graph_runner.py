"""What the runners of built graphs share (ONNX Runtime sessions, TensorRT engines): one graph per weight
set, shape and step kind, the shapes a model serves natively, and making them ready ahead of sampling.

A subclass sets `model`, `mixes_domains` and `default_views`, and defines `load(combo, shape, step_kind)`:
the graph made ready to run (exported or built into the engine cache when missing, then loaded).
"""

from __future__ import annotations

from collections.abc import Sequence

from engines.models.realiz3d_model import Realiz3DModel
from engines.runtime.onnx_export import GraphShape, step_cache_graphs
from engines.types import DomainCombo


class GraphRunner:
    model: Realiz3DModel
    mixes_domains: bool
    default_views: int

    def load(self, combo: DomainCombo | None, shape: GraphShape, step_kind: str) -> object:
        raise NotImplementedError

    def background_build(self, combo: DomainCombo | None, shape: GraphShape, step_kind: str) -> object:
        """What `ready_for` runs in the background (`self.builds`) for a missing graph."""
        raise NotImplementedError

    def full_step_ran(self, shape: GraphShape) -> None:
        """A full step of step caching ran at `shape`: the shallow steps after it want the shallow graph,
        so its build starts now in the background (if it is not loaded, built or building), not when the
        next step asks `ready_for`."""
        self.builds.start((None, shape, "shallow"), lambda: self.background_build(None, shape, "shallow"))  # type: ignore[attr-defined]

    @property
    def step_cache(self) -> bool:
        """Whether `run_step` serves step caching (block-shift, a UNet `deep_cache` splits): two graphs a
        shape, the full one and the shallow one (`onnx_export.py`)."""
        return step_cache_graphs(self.model)

    def default_shape(self, num_views: int | None = None) -> GraphShape:
        """The model's native resolution at `num_views` (default: the runner's) views."""
        cfg = self.model.config
        size = cfg.resolution // cfg.downsample_factor * cfg.patch_size
        return GraphShape(num_views or self.default_views, size, size)

    def weight_sets(self, combos: Sequence[DomainCombo]) -> list[DomainCombo | None]:
        """The weight sets `combos` need: block-shift's one (None), or one per distinct lora combo."""
        return [None] if self.mixes_domains else list(dict.fromkeys(combos))

    def prepare(
        self,
        combos: Sequence[DomainCombo],
        num_views: int | None = None,
        step_kinds: Sequence[str] = ("full",),
    ) -> None:
        """The graphs of `combos` at the native shape, of each step kind, ready (what `build-engines`
        builds without `--envelope`, and a worker's warm-up)."""
        for kind in step_kinds:
            for combo in self.weight_sets(combos):
                self.load(combo, self.default_shape(num_views), kind)
