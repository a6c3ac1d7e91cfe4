"""Leaf types every layer shares: domains, `DomainCombo`, `DomainSchedule`, `UNetInputs`.

This module imports nothing of this project and no torch at run time (the gateway validates schedules
with the same class the sampler runs), so models, sampling and runtime can all import it without
importing each other.

The schedule (METHOD.md):
- `split` in [0, 1]: the first `round(split * N)` denoising steps run synthetic (structure, control
  adherence), the rest real (appearance); `split = 0` is all real, `split = 1` all synthetic.
- `blocks = K`: after the step split, the first K Domain Shifter *sites* (the UNet's resnet and attention
  blocks, in forward order) stay synthetic and the rest run real. `K = 0` is the pure step split.
- `groups`: per-layer-group splits (`down`, `mid`, `up`) that override `split` for that part of the UNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import torch

DOMAINS: tuple[str, ...] = ("real", "synthetic")
LAYER_GROUPS: tuple[str, ...] = ("down", "mid", "up")
#: Upper bound on `blocks` a request may carry before the model is known (an SD UNet has 38 sites);
#: the exact bound, the model's own site count, is checked when the job starts.
MAX_BLOCK_SPLIT = 256

Domain = Literal["real", "synthetic"]


class DomainCombo(NamedTuple):
    """The domain assignment of one UNet call: the domain of each layer group, plus a block split.

    A site `k` of group `g` runs synthetic when `combo[g]` is synthetic or `k < blocks`. The lora form's
    fused weight sets are keyed by it; the block-shift form turns it into per-site domain ids.
    """

    down: str
    mid: str
    up: str
    blocks: int = 0

    @property
    def groups(self) -> tuple[str, str, str]:
        return (self.down, self.mid, self.up)

    def group_domain(self, group: str) -> str:
        return self.groups[LAYER_GROUPS.index(group)]

    def site_domain(self, site: int, group: str) -> str:
        """The domain of block site `site` (0-based, forward order) in layer group `group`."""
        return "synthetic" if site < self.blocks else self.group_domain(group)

    def label(self) -> str:
        """Short name for logs and file names: `rrr`, `ssr`, `rrr-b6`."""
        base = "".join(d[0] for d in self.groups)
        return f"{base}-b{self.blocks}" if self.blocks else base


def uniform_combo(domain: str) -> DomainCombo:
    return DomainCombo(domain, domain, domain)


class DomainSchedule(BaseModel):
    """Which domain each Domain Shifter site runs in at each denoising step.

    Give `split` (fraction of steps, from the start, that run synthetic), `domain` (one domain for every
    step) or `groups`; `blocks` keeps the first K sites synthetic after the step split.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: float | None = Field(None, ge=0.0, le=1.0, description="fraction of steps run synthetic first")
    domain: Domain | None = Field(None, description="shorthand: every step in this domain")
    groups: dict[Literal["down", "mid", "up"], float] | None = Field(
        None, description="per-layer-group split overriding `split` for that group"
    )
    blocks: int = Field(
        0,
        ge=0,
        le=MAX_BLOCK_SPLIT,
        strict=True,
        description="after the step split, the first K block sites stay synthetic (0 = pure step split)",
    )

    @model_validator(mode="after")
    def _one_of(self) -> DomainSchedule:
        if self.split is not None and self.domain is not None:
            raise ValueError("give either 'split' or 'domain', not both")
        if self.split is None and self.domain is None and not self.groups and not self.blocks:
            raise ValueError("a schedule needs 'split', 'domain', 'groups' or 'blocks'")
        for g, s in (self.groups or {}).items():
            if not 0.0 <= s <= 1.0:
                raise ValueError(f"groups.{g} must be in [0, 1], got {s}")
        return self

    @classmethod
    def parse(cls, text: str | float | dict | DomainSchedule) -> DomainSchedule:
        """From a CLI/JSON value: `real`, `synthetic`, a number in [0,1], or a dict.

        Strings like `0.4,up=0` or `0.4,blocks=6` set a global split with per-group overrides or a block
        split.
        """
        if isinstance(text, DomainSchedule):
            return text
        if isinstance(text, dict):
            return cls.model_validate(text)
        if isinstance(text, int | float):
            return cls(split=float(text))
        s = str(text).strip().lower()
        if s in DOMAINS:
            return cls(domain=s)  # type: ignore[arg-type]
        split: float | None = None
        domain: str | None = None
        groups: dict[str, float] = {}
        blocks = 0
        for p in (p.strip() for p in s.split(",")):
            if not p:
                continue
            key, _, val = p.rpartition("=")
            if key == "blocks":
                if not val.isdigit():
                    raise ValueError(f"schedule {text!r}: blocks must be a whole number >= 0, got {val!r}")
                blocks = int(val)
                if blocks > MAX_BLOCK_SPLIT:
                    raise ValueError(f"schedule {text!r}: blocks must be <= {MAX_BLOCK_SPLIT}, got {blocks}")
                continue
            if not key and val in DOMAINS:
                domain = val
                continue
            try:
                num = float(val)
            except ValueError:
                raise ValueError(
                    f"schedule {text!r}: expected 'real', 'synthetic', a split in [0,1], "
                    "'down=..,mid=..,up=..' or 'blocks=K'"
                ) from None
            if key:
                if key not in LAYER_GROUPS:
                    raise ValueError(f"schedule {text!r}: unknown key {key!r} (use down, mid, up or blocks)")
                groups[key] = num
            else:
                split = num
        if split is not None and not 0.0 <= split <= 1.0:
            raise ValueError(f"schedule split must be in [0, 1], got {split}")
        # only what was given, as the object form sets it: the two forms dump alike
        given = {"split": split, "domain": domain, "groups": groups or None, "blocks": blocks or None}
        return cls(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]

    def group_split(self, group: str) -> float:
        if self.groups and group in self.groups:
            return self.groups[group]
        if self.domain is not None:
            return 1.0 if self.domain == "synthetic" else 0.0
        return self.split if self.split is not None else 0.0

    def synthetic_steps(self, group: str, num_steps: int) -> int:
        """Number of leading steps that run synthetic for this group: round(split * N)."""
        # Python's round is banker's rounding; the contract is "round half up" so 0.5*5 = 3 steps.
        return int(self.group_split(group) * num_steps + 0.5)

    def combo_at(self, step: int, num_steps: int) -> DomainCombo:
        """The domain assignment at denoising step `step` (0-based)."""
        if not 0 <= step < num_steps:
            raise ValueError(f"step {step} outside [0, {num_steps})")
        groups = tuple(
            "synthetic" if step < self.synthetic_steps(g, num_steps) else "real" for g in LAYER_GROUPS
        )
        # While every group is synthetic the block split changes nothing: one key, not two.
        blocks = 0 if all(d == "synthetic" for d in groups) else self.blocks
        return DomainCombo(*groups, blocks=blocks)

    def combos(self, num_steps: int) -> list[DomainCombo]:
        return [self.combo_at(i, num_steps) for i in range(num_steps)]

    def describe(self) -> str:
        parts = [self.domain] if self.domain is not None else []
        if self.split is not None:
            parts.append(f"{self.split:g}")
        parts += [f"{g}={s:g}" for g, s in (self.groups or {}).items()]
        if self.blocks:
            parts.append(f"blocks={self.blocks}")
        return ",".join(parts)


#: What `--schedule` (CLI) and `schedule` (API, as a string) take: the one syntax, the one help text.
SCHEDULE_SYNTAX = (
    "a split in [0,1] (0.4: the first round(0.4 N) of N steps run synthetic, the rest real), 'real' or "
    "'synthetic' "
    "(every step), ',blocks=K' after a split (block sites 0..K-1 stay synthetic after it: '0.4,blocks=6'), "
    "or per layer group ('0.4,up=0'; groups down, mid, up)"
)


def schedule_from_value(value: object) -> DomainSchedule:
    """The one schedule parser of the CLI and the API: a string (`0.4`, `real`, `0.4,blocks=6`,
    `0.4,up=0`), a number in [0, 1], an object ({"split": 0.4, "blocks": 6}) or a DomainSchedule.
    Every problem is a ValueError of one line."""
    from pydantic import ValidationError

    try:
        return DomainSchedule.parse(value)  # type: ignore[arg-type]
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}" if loc else msg)
        raise ValueError(f"schedule {value!r}: " + "; ".join(problems)) from None


def _schedule_input(value: object) -> object:
    """A string or a number becomes a DomainSchedule here; an object goes on to DomainSchedule's own
    validation (whose errors name the field, e.g. `schedule.split`)."""
    if isinstance(value, bool):
        raise ValueError("a schedule is a string, a number in [0, 1] or an object, not true/false")
    if isinstance(value, str) and len(value) > 200:
        raise ValueError("a schedule string is at most 200 characters")
    if isinstance(value, str | int | float):
        return schedule_from_value(value)
    return value


#: The `schedule` field's type in requests: the CLI's string form, a bare split number, or the object;
#: always a DomainSchedule once validated. Its JSON schema (OpenAPI) shows the three inputs.
ScheduleValue = Annotated[
    DomainSchedule,
    BeforeValidator(
        _schedule_input,
        json_schema_input_type=Annotated[
            str,
            Field(
                max_length=200,
                description="the CLI's form: " + SCHEDULE_SYNTAX,
                examples=["0.4", "real", "synthetic", "0.4,blocks=6", "0.4,up=0"],
            ),
        ]
        | Annotated[
            float, Field(ge=0.0, le=1.0, description="a split: this fraction of the steps runs synthetic")
        ]
        | DomainSchedule,
    ),
]


@dataclass
class UNetInputs:
    """One UNet call: `n = objects * views` images, views of one object contiguous."""

    sample: torch.Tensor  # (n, C, H, W) noisy images/latents
    timestep: torch.Tensor  # (n,) per-sample timesteps (jobs batched together may be at different steps)
    text: torch.Tensor  # (n, tokens, dim)
    cameras: torch.Tensor  # (n, 16) camera-to-world, flattened
    geometry: torch.Tensor | None  # (n, G, H, W) or None = zeros
    num_views: int

    @property
    def batch(self) -> int:
        return self.sample.shape[0]
