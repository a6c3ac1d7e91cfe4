"""Step-split domain schedule: boundaries, shorthands, groups, validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engines.sampling.schedule import DomainSchedule


def test_split_04_over_10_steps_is_4_synthetic_then_6_real():
    s = DomainSchedule(split=0.4)
    domains = [c[0] for c in s.combos(10)]
    assert domains == ["synthetic"] * 4 + ["real"] * 6
    assert all(len(set(c)) == 1 for c in s.combos(10))


def test_split_0_is_all_real_and_1_all_synthetic():
    assert {c for c in DomainSchedule(split=0).combos(7)} == {("real",) * 3}
    assert {c for c in DomainSchedule(split=1).combos(7)} == {("synthetic",) * 3}
    assert DomainSchedule.parse("real") == DomainSchedule(domain="real")
    assert {c for c in DomainSchedule.parse("synthetic").combos(3)} == {("synthetic",) * 3}


def test_rounding_is_half_up():
    assert DomainSchedule(split=0.5).synthetic_steps("down", 5) == 3
    assert DomainSchedule(split=0.25).synthetic_steps("down", 10) == 3  # 2.5 -> 3


def test_layer_group_splits_override_the_global_split():
    s = DomainSchedule.parse("0.5,up=0,mid=1")
    combos = s.combos(4)
    assert combos[0] == ("synthetic", "synthetic", "real")
    assert combos[2] == ("real", "synthetic", "real")
    assert DomainSchedule(groups={"down": 1.0}).combo_at(3, 4) == ("synthetic", "real", "real")


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
