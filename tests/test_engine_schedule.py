"""Domain schedule: step split, block split, shorthands, groups, validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engines.types import MAX_BLOCK_SPLIT, DomainCombo, DomainSchedule, uniform_combo


def test_split_04_over_10_steps_is_4_synthetic_then_6_real():
    s = DomainSchedule(split=0.4)
    domains = [c[0] for c in s.combos(10)]
    assert domains == ["synthetic"] * 4 + ["real"] * 6
    assert all(len(set(c.groups)) == 1 and c.blocks == 0 for c in s.combos(10))


def test_split_0_is_all_real_and_1_all_synthetic():
    assert {c for c in DomainSchedule(split=0).combos(7)} == {uniform_combo("real")}
    assert {c for c in DomainSchedule(split=1).combos(7)} == {uniform_combo("synthetic")}
    assert DomainSchedule.parse("real") == DomainSchedule(domain="real")
    assert {c for c in DomainSchedule.parse("synthetic").combos(3)} == {uniform_combo("synthetic")}


def test_rounding_is_half_up():
    assert DomainSchedule(split=0.5).synthetic_steps("down", 5) == 3
    assert DomainSchedule(split=0.25).synthetic_steps("down", 10) == 3  # 2.5 -> 3


def test_layer_group_splits_override_the_global_split():
    s = DomainSchedule.parse("0.5,up=0,mid=1")
    combos = s.combos(4)
    assert combos[0] == ("synthetic", "synthetic", "real", 0)
    assert combos[2] == ("real", "synthetic", "real", 0)
    assert DomainSchedule(groups={"down": 1.0}).combo_at(3, 4) == ("synthetic", "real", "real", 0)


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "sideways", "down=2", "left=0.3", "0.4,up=x"])
def test_bad_schedules_are_clear_errors(bad):
    with pytest.raises((ValueError, ValidationError)):
        DomainSchedule.parse(bad)


def test_split_and_domain_together_is_rejected():
    with pytest.raises(ValidationError, match="either"):
        DomainSchedule(split=0.3, domain="real")
    with pytest.raises(ValidationError):
        DomainSchedule.model_validate({"split": 0.3, "extra": 1})


def test_step_outside_range_is_rejected():
    with pytest.raises(ValueError):
        DomainSchedule(split=0.4).combo_at(10, 10)


def test_block_split_starts_after_the_step_split():
    s = DomainSchedule.parse("0.4,blocks=6")
    assert s == DomainSchedule(split=0.4, blocks=6)
    combos = s.combos(10)
    # steps before the split: every site synthetic (one key, whatever K is)
    assert combos[:4] == [DomainCombo("synthetic", "synthetic", "synthetic", 0)] * 4
    # after it: sites < 6 synthetic, the rest real
    assert combos[4:] == [DomainCombo("real", "real", "real", 6)] * 6
    assert combos[4].site_domain(5, "down") == "synthetic"
    assert combos[4].site_domain(6, "down") == "real"


def test_blocks_zero_is_the_pure_step_split():
    assert DomainSchedule.parse("0.4,blocks=0").combos(10) == DomainSchedule(split=0.4).combos(10)


def test_block_split_alone_and_with_a_domain():
    assert DomainSchedule.parse("blocks=3").combo_at(0, 5) == DomainCombo("real", "real", "real", 3)
    assert DomainSchedule.parse("real,blocks=3").combo_at(4, 5) == DomainCombo("real", "real", "real", 3)
    assert DomainSchedule.model_validate({"split": 0.4, "blocks": 6}).blocks == 6
    assert DomainSchedule.parse("0.4,blocks=6").describe() == "0.4,blocks=6"


@pytest.mark.parametrize(
    "bad", ["0.4,blocks=-1", "0.4,blocks=2.5", "0.4,blocks=x", f"0.4,blocks={MAX_BLOCK_SPLIT + 1}"]
)
def test_bad_block_splits_are_clear_errors(bad):
    with pytest.raises(ValueError, match="blocks"):
        DomainSchedule.parse(bad)


@pytest.mark.parametrize(
    "bad", [{"split": 0.4, "blocks": -1}, {"split": 0.4, "blocks": 2.5}, {"split": 0.4, "blocks": "6"}]
)
def test_bad_block_splits_in_json_are_rejected(bad):
    with pytest.raises(ValidationError, match="blocks"):
        DomainSchedule.model_validate(bad)
