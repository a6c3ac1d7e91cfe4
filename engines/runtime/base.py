"""The one small interface the sampler calls: `UNetRunner`.

A runner evaluates the multi-view UNet for a batch under a domain assignment: one `DomainCombo` for the
whole batch, or one per sample. How many graphs that takes depends on the Domain Shifter's form
(`run_domains`): block-shift (and unfused lora) take per-sample domain ids as an input, so one call and
one graph per shape serve any mix; fused lora runs one weight set per call, one call per distinct combo.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from engines.types import DomainCombo, UNetInputs


class UNetRunner(Protocol):
    backend: str
    device: torch.device
    dtype: torch.dtype
    #: True when one call may mix domain combos per sample (block-shift, or unfused lora adapters).
    mixes_domains: bool

    def prepare(self, combos: Sequence[DomainCombo]) -> None:
        """Make every weight set / engine these combos need ready (fuse, compile, load) ahead of sampling."""
        ...

    def __call__(self, inputs: UNetInputs, domains: DomainCombo | Sequence[DomainCombo]) -> torch.Tensor:
        """Noise prediction (n, C, H, W) in float32."""
        ...

    # Optional: `batch_shape(batch, num_views) -> int` (see `call_batch`) for runners built for a set
    # of batch sizes, `max_batch(num_views) -> int | None` for runners with a largest batch, and
    # `ready_for(num_views, height, width, combos, step_kind="full") -> bool` for runners that build a
    # graph per shape and step kind: the step batcher then skips a group until its graphs are built
    # (`background_builds.py`). Step caching: `step_cache` (bool) and `run_step(inputs, domains, deep)`.


def graph_inputs(
    inputs: UNetInputs, geometry_channels: int, domain_ids: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The UNet's named tensor inputs, as compiled and exported graphs take them: a model with geometry
    channels always gets a geometry tensor (zeros, what the UNet uses for None), since None and a tensor
    would be two different graphs; `domain_ids` when the Domain Shifter takes per-sample domains."""
    feeds = {
        "sample": inputs.sample,
        "timestep": inputs.timestep,
        "text": inputs.text,
        "cameras": inputs.cameras,
    }
    if geometry_channels:
        g = inputs.geometry
        if g is None:
            s = inputs.sample.shape
            g = inputs.sample.new_zeros((s[0], geometry_channels, s[2], s[3]))
        feeds["geometry"] = g
    if domain_ids is not None:
        feeds["domain_ids"] = domain_ids
    return feeds


def max_batch(runner: object, num_views: int) -> int | None:
    """The most images one call of `runner` takes for `num_views`-view objects (None: no limit)."""
    limit = getattr(runner, "max_batch", None)
    return None if limit is None else limit(num_views)


def call_limit(runner: object, shape: Sequence[int], num_views: int, max_cells: int | None) -> int | None:
    """The most rows one call of `runner` takes for inputs of `shape` (n, C, H, W): its largest batch and
    the budget `max_cells` (rows x H x W), never below one object (an object's views attend to each
    other, so they cannot be split). None: no limit."""
    h, w = shape[-2], shape[-1]
    limits = [n for n in (max_batch(runner, num_views),) if n is not None]
    if max_cells is not None:
        limits.append(max(num_views, max_cells // (h * w) // num_views * num_views))
    return min(limits) if limits else None


def call_batch(runner: object, batch: int, num_views: int) -> int:
    """The batch `runner` should be called with for `batch` real images: `batch` itself, or the next
    size it was compiled/captured for (CUDA graphs, static-shape engines); the step batcher pads up to
    it so jobs joining and leaving cannot trigger a compile per distinct batch size."""
    shape = getattr(runner, "batch_shape", None)
    return batch if shape is None else shape(batch, num_views)


def power_of_two_objects(batch: int, num_views: int, limit: int | None = None) -> int:
    """`batch` rounded up to a power-of-two number of view groups (capped at `limit` images)."""
    groups = -(-batch // num_views)
    padded = num_views * (1 << (groups - 1).bit_length())
    return padded if limit is None else max(batch, min(padded, limit))


def pad_inputs(inputs: UNetInputs, batch: int) -> UNetInputs:
    """`inputs` grown to `batch` rows by repeating its last object (whole view groups); the extra rows'
    outputs are thrown away, and every sample is computed independently of the other objects."""
    extra = batch - inputs.batch
    if extra == 0:
        return inputs
    v = inputs.num_views
    if extra < 0 or extra % v or inputs.batch % v:
        raise ValueError(f"cannot pad a batch of {inputs.batch} to {batch} in groups of {v} views")
    last = torch.arange(inputs.batch - v, inputs.batch, device=inputs.sample.device)
    idx = torch.cat([torch.arange(inputs.batch, device=last.device), last.repeat(extra // v)])
    return select(inputs, idx)


def per_sample(domains: DomainCombo | Sequence[DomainCombo], n: int) -> list[DomainCombo]:
    if isinstance(domains, tuple) and domains and isinstance(domains[0], str):
        return [domains] * n  # type: ignore[list-item]
    combos = list(domains)  # type: ignore[arg-type]
    if len(combos) != n:
        raise ValueError(f"{len(combos)} domain combos for a batch of {n}")
    return combos


def uniform(domains: DomainCombo | Sequence[DomainCombo]) -> DomainCombo | None:
    """The single combo if every sample shares it, else None."""
    if isinstance(domains, tuple) and domains and isinstance(domains[0], str):
        return domains  # type: ignore[return-value]
    combos = set(domains)  # type: ignore[arg-type]
    return next(iter(combos)) if len(combos) == 1 else None  # type: ignore[return-value]


def select(inputs: UNetInputs, idx: torch.Tensor) -> UNetInputs:
    """Rows `idx` of every input (idx must cover whole objects)."""
    if idx.numel() % inputs.num_views:
        raise ValueError("a sub-batch must hold whole objects (all their views)")
    return UNetInputs(
        sample=inputs.sample[idx],
        timestep=inputs.timestep[idx],
        text=inputs.text[idx],
        cameras=inputs.cameras[idx],
        geometry=None if inputs.geometry is None else inputs.geometry[idx],
        num_views=inputs.num_views,
    )


def run_per_combo(
    inputs: UNetInputs,
    domains: DomainCombo | Sequence[DomainCombo],
    run_one: Callable[[UNetInputs, DomainCombo], torch.Tensor],
    device: torch.device,
) -> torch.Tensor:
    """For runners that serve one weight set per call: one call per distinct combo, scattered back."""
    combo = uniform(domains)
    if combo is not None:
        return run_one(inputs, combo)
    combos = per_sample(domains, inputs.batch)
    out = torch.empty(inputs.sample.shape, dtype=torch.float32, device=device)
    for c in dict.fromkeys(combos):
        idx = torch.tensor([i for i, ci in enumerate(combos) if ci == c], device=inputs.sample.device)
        out[idx] = run_one(select(inputs, idx), c)
    return out


#: run_one(inputs, combo, domain_ids): combo for a fused weight set (lora), or domain_ids (n, slots)
RunOne = Callable[[UNetInputs, DomainCombo | None, torch.Tensor | None], torch.Tensor]


def run_domains(
    shifter,  # noqa: ANN001 - a DomainShifter
    inputs: UNetInputs,
    domains: DomainCombo | Sequence[DomainCombo],
    run_one: RunOne,
    device: torch.device,
    fused: bool = True,
) -> torch.Tensor:
    """Evaluate `inputs` under `domains` with as few calls as the shifter's form allows: one call with
    per-sample `domain_ids` when it mixes domains, else one call per distinct combo."""
    if shifter.mixes_domains(fused):
        combos = per_sample(domains, inputs.batch)
        return run_one(inputs, None, shifter.domain_ids(combos, device=inputs.sample.device))
    return run_per_combo(inputs, domains, lambda x, c: run_one(x, c, None), device)


def run_padded(
    runner: UNetRunner, inputs: UNetInputs, domains: DomainCombo | Sequence[DomainCombo]
) -> torch.Tensor:
    """`runner(inputs, domains)` at the batch the runner wants (`call_batch`), cut back to `inputs`."""
    real = inputs.batch
    padded = pad_inputs(inputs, call_batch(runner, real, inputs.num_views))
    if padded is not inputs:
        combo = uniform(domains)
        if combo is not None:
            domains = combo
        else:
            combos = per_sample(domains, real)
            domains = combos + [combos[-1]] * (padded.batch - real)  # padding rows copy the last object
    return runner(padded, domains)[:real]


def run_step_padded(
    runner: object,
    inputs: UNetInputs,
    domains: DomainCombo | Sequence[DomainCombo],
    deep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`runner.run_step(inputs, domains, deep)` (step caching) at the batch the runner wants, the padding
    rows copying the last object's inputs and cached feature; cut back to `inputs`."""
    real, v = inputs.batch, inputs.num_views
    batch = call_batch(runner, real, v)
    if batch != real:
        combos = per_sample(domains, real)
        domains = combos + [combos[-1]] * (batch - real)
        if deep is not None:
            deep = torch.cat([deep, deep[real - v : real].repeat((batch - real) // v, 1, 1, 1)])
        inputs = pad_inputs(inputs, batch)
    pred, feature = runner.run_step(inputs, domains, deep)  # type: ignore[attr-defined]
    return pred[:real], feature[:real]


def step_domain_ids(
    runner: object,
    inputs: UNetInputs,
    domains: DomainCombo | Sequence[DomainCombo],
    device: torch.device,
) -> torch.Tensor:
    """The per-sample domain ids of a step-caching call (`run_step`) of a graph runner: its graphs take
    them as an input. A runner whose model has no step caching refuses the call."""
    if not getattr(runner, "step_cache", False):
        from engines.errors import UserInputError

        raise UserInputError(f"model {runner.model.config.name} does not serve step caching")  # type: ignore[attr-defined]
    return runner.model.shifter.domain_ids(per_sample(domains, inputs.batch), device=device)  # type: ignore[attr-defined]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously): a wall-clock step timing
    taken without it measures the launches, not the work. A no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_pieces(
    inputs: UNetInputs, domains: DomainCombo | Sequence[DomainCombo], limit: int | None
) -> list[tuple[int, int, UNetInputs, DomainCombo | Sequence[DomainCombo]]]:
    """`inputs` cut into calls of at most `limit` rows, whole objects each (never fewer than one object):
    [(first row, end row, inputs, domains)]. One piece, `inputs` itself, when it fits."""
    n, v = inputs.batch, inputs.num_views
    if limit is None or n <= limit:
        return [(0, n, inputs, domains)]
    step = max(v, limit // v * v)
    combo = uniform(domains)
    combos = None if combo is not None else per_sample(domains, n)
    pieces = []
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        idx = torch.arange(lo, hi, device=inputs.sample.device)
        pieces.append((lo, hi, select(inputs, idx), combo if combos is None else combos[lo:hi]))
    return pieces
