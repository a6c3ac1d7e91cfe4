"""The step-split domain schedule (`DomainSchedule`).

The first `round(split * N)` denoising steps run in the synthetic domain (structure, control adherence),
the rest in the real domain (appearance). `split = 0` is all real, `split = 1` all synthetic. Optional
per-layer-group splits (`down`, `mid`, `up`) override the global split for that part of the UNet, which
gives the depth-wise split of METHOD.md (encoder synthetic, decoder real) and mixtures of both.

Pure Python (no torch): the gateway validates schedules with the same class the sampler runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DOMAINS: tuple[str, ...] = ("real", "synthetic")
LAYER_GROUPS: tuple[str, ...] = ("down", "mid", "up")

Domain = Literal["real", "synthetic"]
# The domain of each layer group, in LAYER_GROUPS order: what one fused weight set is keyed by.
DomainCombo = tuple[str, str, str]


class DomainSchedule(BaseModel):
    """Which domain each layer group runs in at each denoising step.

    Give either `split` (fraction of steps, from the start, that run synthetic) or `domain` (one
    domain for every step); `groups` optionally overrides the split for named layer groups.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: float | None = Field(None, ge=0.0, le=1.0, description="fraction of steps run synthetic first")
    domain: Domain | None = Field(None, description="shorthand: every step in this domain")
    groups: dict[Literal["down", "mid", "up"], float] | None = Field(
        None, description="per-layer-group split overriding `split` for that group"
    )

    @model_validator(mode="after")
    def _one_of(self) -> DomainSchedule:
        if self.split is not None and self.domain is not None:
            raise ValueError("give either 'split' or 'domain', not both")
        if self.split is None and self.domain is None and not self.groups:
            raise ValueError("a schedule needs 'split', 'domain' or 'groups'")
        for g, s in (self.groups or {}).items():
            if not 0.0 <= s <= 1.0:
                raise ValueError(f"groups.{g} must be in [0, 1], got {s}")
        return self

    @classmethod
    def parse(cls, text: str | float | dict | DomainSchedule) -> DomainSchedule:
        """From a CLI/JSON value: `real`, `synthetic`, a number in [0,1], or a dict.

        Strings like `0.4,up=0` set a global split with per-group overrides.
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
        parts = [p.strip() for p in s.split(",") if p.strip()]
        split: float | None = None
        groups: dict[str, float] = {}
        for p in parts:
            key, _, val = p.rpartition("=")
            try:
                num = float(val)
            except ValueError:
                raise ValueError(
                    f"schedule {text!r}: expected 'real', 'synthetic', a split in [0,1] or 'down=..,mid=..,up=..'"
                ) from None
            if key:
                if key not in LAYER_GROUPS:
                    raise ValueError(f"schedule {text!r}: unknown layer group {key!r} (use down, mid, up)")
                groups[key] = num
            else:
                split = num
        if split is not None and not 0.0 <= split <= 1.0:
            raise ValueError(f"schedule split must be in [0, 1], got {split}")
        return cls(split=split, groups=groups or None)  # type: ignore[arg-type]

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
        """The domain of each layer group (down, mid, up) at denoising step `step` (0-based)."""
        if not 0 <= step < num_steps:
            raise ValueError(f"step {step} outside [0, {num_steps})")
        return tuple(  # type: ignore[return-value]
            "synthetic" if step < self.synthetic_steps(g, num_steps) else "real" for g in LAYER_GROUPS
        )

    def combos(self, num_steps: int) -> list[DomainCombo]:
        return [self.combo_at(i, num_steps) for i in range(num_steps)]

    def describe(self) -> str:
        if self.domain is not None:
            return self.domain
        base = f"{self.split:g}" if self.split is not None else ""
        extra = ",".join(f"{g}={s:g}" for g, s in (self.groups or {}).items())
        return ",".join(p for p in (base, extra) if p)


def uniform_combo(domain: str) -> DomainCombo:
    return (domain, domain, domain)
