"""`domain_shifter/config.json` for both Domain Shifter forms, and where the UNet's block sites are.

- `block-shift` (the paper's form, the default): one residual `x~ = x + W_right W_left Embed(d)` at the
  input of every block site.
- `lora` (our first reading, kept as an option): low-rank adapters on chosen Linear/Conv2d layers.

A folder written before forms existed has no `form` key: it is a lora folder and still loads.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from torch import nn

from engines.types import DOMAINS

#: The UNet's backbone blocks (METHOD.md): every resnet and attention (transformer) module of the down,
#: mid and up blocks.
DEFAULT_SITES = (
    r"(down_blocks|up_blocks)\.\d+\.(resnets|attentions)\.\d+",
    r"mid_block\.(resnets|attentions)\.\d+",
)
_SITE_NAME = re.compile(r"(?:(down_blocks|up_blocks)\.(\d+)|(mid_block))\.(resnets|attentions)\.(\d+)")
_SECTION = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}

DEFAULT_LORA_TARGETS = (
    r".*attn1\.to_(q|k|v)$",
    r".*attn1\.to_out\.0$",
    r".*attn2\.to_out\.0$",
    r".*ff\.net\.2$",
    r".*resnets\.\d+\.conv(1|2)$",
    r"^conv_out$",
)


def _check_regexes(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"pattern {pattern!r} is not a valid regex: {e}") from None
    return patterns


def _check_domains(domains: list[str]) -> list[str]:
    if sorted(domains) != sorted(DOMAINS):
        raise ValueError(f"domains must be exactly {list(DOMAINS)}")
    return domains


class BlockShiftConfig(BaseModel):
    """The paper's form: a domain residual before every block site."""

    model_config = ConfigDict(extra="forbid")

    form: Literal["block-shift"] = "block-shift"
    rank: int = Field(4, ge=1, le=256, description="width of W_left's output (the low rank)")
    embed_dim: int = Field(16, ge=1, le=1024, description="width of each site's domain embedding")
    sites: list[str] = Field(default_factory=lambda: list(DEFAULT_SITES), description="block name regexes")
    tau_blocks: int | None = Field(
        None,
        ge=0,
        description="stage 2: real samples draw i ~ U[0, tau_B]; None = half the sites (fixed at build)",
    )
    domains: list[str] = Field(default_factory=lambda: list(DOMAINS))

    @field_validator("sites")
    @classmethod
    def _valid_sites(cls, v: list[str]) -> list[str]:
        return _check_regexes(v)

    @field_validator("domains")
    @classmethod
    def _real_and_synthetic(cls, v: list[str]) -> list[str]:
        return _check_domains(v)


class LoraShifterConfig(BaseModel):
    """The earlier reading: `y = W x + B (e_d * (A x))` on regex-chosen Linear/Conv2d layers."""

    model_config = ConfigDict(extra="forbid")

    form: Literal["lora"] = "lora"
    rank: int = Field(4, ge=1, le=256)
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    sites: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SITES), description="block sites a `blocks=K` split counts"
    )
    domains: list[str] = Field(default_factory=lambda: list(DOMAINS))

    @field_validator("targets", "sites")
    @classmethod
    def _valid_patterns(cls, v: list[str]) -> list[str]:
        return _check_regexes(v)

    @field_validator("domains")
    @classmethod
    def _real_and_synthetic(cls, v: list[str]) -> list[str]:
        return _check_domains(v)


DomainShifterConfig = Annotated[BlockShiftConfig | LoraShifterConfig, Field(discriminator="form")]
_ADAPTER: TypeAdapter = TypeAdapter(DomainShifterConfig)


def parse_shifter_config(data: dict[str, Any]) -> BlockShiftConfig | LoraShifterConfig:
    """Validate a `config.json` dict; one without `form` predates block-shift and is the lora form."""
    if "form" not in data:
        data = {**data, "form": "lora"}
    return _ADAPTER.validate_python(data)


def layer_group(module_name: str) -> str:
    """Which schedule group (down / mid / up) a UNet module belongs to.

    Everything before the mid block (conv_in, time and camera embeddings, down blocks) is `down`;
    the decoder and the output head are `up`.
    """
    if module_name.startswith("mid_block"):
        return "mid"
    if module_name.startswith(("up_blocks", "conv_norm_out", "conv_out")):
        return "up"
    return "down"


def _forward_key(name: str) -> tuple[int, int, int, int]:
    m = _SITE_NAME.fullmatch(name)
    if m is None:
        raise ValueError(
            f"site {name!r} is not a resnet or attention module of a down, mid or up block "
            "(expected e.g. down_blocks.1.attentions.0)"
        )
    section = m.group(1) or m.group(3)
    block = int(m.group(2) or 0)
    # Inside a block, resnet i runs before attention i (diffusers' down, mid and up blocks alike).
    return (_SECTION[section], block, int(m.group(5)), 0 if m.group(4) == "resnets" else 1)


def block_sites(unet: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the block modules the patterns select, in the UNet's forward order."""
    compiled = [re.compile(p) for p in patterns]
    names = [n for n, _ in unet.named_modules() if n and any(p.fullmatch(n) for p in compiled)]
    if not names:
        raise ValueError("Domain Shifter site patterns match no block of the UNet")
    return sorted(names, key=_forward_key)


def site_channels(module: nn.Module) -> int:
    """Width of a block's input: a resnet's `norm1` and a transformer's `norm` see exactly it (for an
    up block's resnet that includes the skip concatenation)."""
    norm = getattr(module, "norm1", None) or getattr(module, "norm", None)
    if isinstance(norm, nn.GroupNorm):
        return norm.num_channels
    raise ValueError(f"cannot tell the input width of {type(module).__name__}")
