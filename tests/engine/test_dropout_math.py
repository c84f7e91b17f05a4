"""Condition dropout decisions: seeded, per step and per sample, at the rate asked, independent of the global RNG."""

import math

import pytest
import torch

from guiders.dropout import MASK64, dropped, splitmix64, step_seed


def binomial_bound(trials: int, rate: float, sigmas: float = 4.0) -> float:
    return sigmas * math.sqrt(trials * rate * (1.0 - rate))


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("count", [1, 3])
def test_rate_within_binomial_spread(rate: float, count: int) -> None:
    steps = 4000
    masks = torch.stack([dropped(7, step, count, rate) for step in range(steps)])
    trials = steps * count
    assert abs(int(masks.sum()) - trials * rate) <= binomial_bound(trials, rate)
    for position in range(count):  # every position of the batch is dropped at the rate, not only the first
        assert abs(int(masks[:, position].sum()) - steps * rate) <= binomial_bound(steps, rate)


def test_samples_and_steps_are_independent() -> None:
    """Two positions of a step are dropped together as often as independence predicts (rate²), and a step's draw
    does not predict the next one's."""
    rate, steps = 0.3, 6000
    masks = torch.stack([dropped(11, step, 2, rate) for step in range(steps)]).double()
    both = float((masks[:, 0] * masks[:, 1]).sum())
    assert abs(both - steps * rate**2) <= binomial_bound(steps, rate**2)
    consecutive = float((masks[1:, 0] * masks[:-1, 0]).sum())
    assert abs(consecutive - (steps - 1) * rate**2) <= binomial_bound(steps - 1, rate**2)


def test_rate_zero_never_and_rate_one_always() -> None:
    for step in range(200):
        assert not dropped(3, step, 4, 0.0).any()
        assert dropped(3, step, 4, 1.0).all()


def test_same_seed_same_decisions_other_seed_other_decisions() -> None:
    first = torch.stack([dropped(123, step, 2, 0.5) for step in range(64)])
    again = torch.stack([dropped(123, step, 2, 0.5) for step in range(64)])
    other = torch.stack([dropped(124, step, 2, 0.5) for step in range(64)])
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_a_step_does_not_depend_on_earlier_draws() -> None:
    later = dropped(5, 40, 3, 0.5)
    for step in range(40):
        dropped(5, step, 3, 0.5)
    assert torch.equal(dropped(5, 40, 3, 0.5), later)


def test_the_global_rng_is_left_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    dropped(9, 2, 8, 0.5)
    assert torch.equal(torch.rand(4), expected)


def test_largest_seed_and_distinct_step_seeds() -> None:
    assert dropped(MASK64, 10**9, 2, 0.5).shape == (2,)
    assert len({step_seed(MASK64, step) for step in range(10000)}) == 10000
    assert len({splitmix64(value) for value in range(10000)}) == 10000


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_rate_outside_range(rate: float) -> None:
    with pytest.raises(ValueError, match="0.0–1.0"):
        dropped(0, 0, 1, rate)
