"""ScaleSchedule: s = cfg_min + (cfg − cfg_min)·f(p), p = i/(N − 1), exact endpoints, custom per-step lists."""

import math

import pytest

from guiders.schedule import ScaleSchedule, parse_custom

# f(p) as the issue defines it, written here independently of guiders.schedule.
SWITCH, EXPONENT, CYCLES = 0.3, 3.0, 2.5
SPEC_F = {
    "constant": lambda p: 1.0,
    "linear_down": lambda p: 1.0 - p,
    "linear_up": lambda p: p,
    "cosine_down": lambda p: (1.0 + math.cos(math.pi * p)) / 2.0,
    "cosine_up": lambda p: (1.0 - math.cos(math.pi * p)) / 2.0,
    "step_down": lambda p: 1.0 if p < SWITCH else 0.0,
    "step_up": lambda p: 0.0 if p < SWITCH else 1.0,
    "power_down": lambda p: 1.0 - p**EXPONENT,
    "power_up": lambda p: p**EXPONENT,
    # mcmonkey's Dynamic Thresholding (dynthres_core.py interpretScale), with exact π where it writes 1.5707/6.28318.
    "half_cosine_down": lambda p: math.cos(p),
    "half_cosine_up": lambda p: 1.0 - math.cos(p),
    "linear_repeating": lambda p: (0.5 - (p * CYCLES) % 1.0) * 2 if (p * CYCLES) % 1.0 < 0.5
    else ((p * CYCLES) % 1.0 - 0.5) * 2,
    "cosine_repeating": lambda p: math.cos(p * 2 * math.pi * CYCLES) * 0.5 + 0.5,
    "sawtooth": lambda p: (p * CYCLES) % 1.0,
}


def scales(schedule: ScaleSchedule, cfg: float, steps: int) -> list[float]:
    return [schedule.scale(cfg, i, steps) for i in range(steps)]


@pytest.mark.parametrize("curve", sorted(SPEC_F))
@pytest.mark.parametrize("steps", [2, 7, 10, 31])
def test_curves_follow_the_spec(curve, steps):
    cfg, cfg_min = 8.5, 1.5
    schedule = ScaleSchedule(curve=curve, cfg_min=cfg_min, switch_at=SWITCH, exponent=EXPONENT, cycles=CYCLES)
    for i, got in enumerate(scales(schedule, cfg, steps)):
        p = i / (steps - 1)
        assert got == pytest.approx(cfg_min + (cfg - cfg_min) * SPEC_F[curve](p), rel=1e-12, abs=1e-12), (i, p)


@pytest.mark.parametrize(("curve", "steps", "expected"), [
    ("constant", 4, [7.0, 7.0, 7.0, 7.0]),
    ("linear_down", 4, [7.0, 5.0, 3.0, 1.0]),
    ("linear_up", 4, [1.0, 3.0, 5.0, 7.0]),
    ("cosine_down", 3, [7.0, 4.0, 1.0]),
    ("cosine_up", 3, [1.0, 4.0, 7.0]),
    ("step_down", 5, [7.0, 7.0, 1.0, 1.0, 1.0]),  # p = 0.5 is not < switch_at 0.5
    ("step_up", 5, [1.0, 1.0, 7.0, 7.0, 7.0]),
    ("power_down", 3, [7.0, 5.5, 1.0]),  # 1 − 0.5² = 0.75
    ("power_up", 3, [1.0, 2.5, 7.0]),
    ("linear_repeating", 5, [7.0, 1.0, 7.0, 1.0, 7.0]),  # 2 cycles: phase 0, ½, 0, ½, 0
    ("cosine_repeating", 5, [7.0, 1.0, 7.0, 1.0, 7.0]),
    ("sawtooth", 5, [1.0, 4.0, 1.0, 4.0, 1.0]),  # phase 0, ½, 0, ½, 0 of (1 … 7)
    ("half_cosine_down", 2, [7.0, 1.0 + 6.0 * math.cos(1.0)]),  # ends at cos 1 ≈ 0.54 of the way, as mcmonkey's
    ("half_cosine_up", 2, [1.0, 1.0 + 6.0 * (1.0 - math.cos(1.0))]),
])
def test_worked_examples(curve, steps, expected):
    schedule = ScaleSchedule(curve=curve, cfg_min=1.0, switch_at=0.5, exponent=2.0, cycles=2.0)
    assert scales(schedule, 7.0, steps) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("curve", ["linear_down", "cosine_down", "power_down", "step_down"])
@pytest.mark.parametrize("cfg", [7.3, 4.1, 12.0, 0.7, 0.3])
@pytest.mark.parametrize("cfg_min", [1.0, 0.0, 2.3, 1.1])  # e.g. 1.1 + (7.3 − 1.1) ≠ 7.3 in floating point
def test_endpoints_are_exact(curve, cfg, cfg_min):
    down = ScaleSchedule(curve=curve, cfg_min=cfg_min, exponent=1.7)
    up = ScaleSchedule(curve=curve.replace("down", "up"), cfg_min=cfg_min, exponent=1.7)
    for steps in range(2, 80):
        assert down.scale(cfg, 0, steps) == cfg
        assert down.scale(cfg, steps - 1, steps) == cfg_min
        assert up.scale(cfg, 0, steps) == cfg_min
        assert up.scale(cfg, steps - 1, steps) == cfg


def test_last_step_reaches_exactly_one():
    """With cfg_min 1.0 the last step's scale is exactly 1.0, so the uncond can be skipped there."""
    for steps in (3, 9, 20, 33, 50):
        for curve in ("linear_down", "cosine_down", "power_down"):
            assert ScaleSchedule(curve=curve, cfg_min=1.0).scale(6.1, steps - 1, steps) == 1.0


def test_constant_is_the_given_cfg_whatever_cfg_min():
    schedule = ScaleSchedule(curve="constant", cfg_min=3.0)
    assert scales(schedule, 5.5, 6) == [5.5] * 6


def test_custom_scales_are_absolute_and_the_last_holds():
    schedule = ScaleSchedule(curve="custom", cfg_min=3.0, custom=parse_custom("12, 10, 8, 5"))
    assert scales(schedule, 7.0, 7) == [12.0, 10.0, 8.0, 5.0, 5.0, 5.0, 5.0]
    assert scales(schedule, 99.0, 2) == [12.0, 10.0]


@pytest.mark.parametrize(("text", "expected"), [
    ("12, 10, 8, 5", (12.0, 10.0, 8.0, 5.0)),
    ("12 10\n8\t5", (12.0, 10.0, 8.0, 5.0)),
    ("  7.5,1e1 ; 0 ,", (7.5, 10.0, 0.0)),
    ("3", (3.0,)),
])
def test_parse_custom(text, expected):
    assert parse_custom(text) == expected


@pytest.mark.parametrize(("text", "position", "token"), [
    ("12, ten, 8", 2, "ten"),
    ("abc", 1, "abc"),
    ("1, 2, 3, 4x", 4, "4x"),
    ("5 6 nan", 3, "nan"),
    ("5, -2", 2, "-2"),
    ("1, inf", 2, "inf"),
])
def test_parse_custom_names_the_bad_position(text, position, token):
    with pytest.raises(ValueError) as error:
        parse_custom(text)
    message = str(error.value)
    assert str(position) in message and token in message


@pytest.mark.parametrize("text", ["", "   ", " , ;"])
def test_parse_custom_rejects_empty_text(text):
    with pytest.raises(ValueError):
        parse_custom(text)


def test_unknown_curve_is_an_error():
    with pytest.raises(ValueError, match="linear_dwn"):
        ScaleSchedule(curve="linear_dwn").scale(7.0, 0, 10)


@pytest.mark.parametrize(("text", "position"), [("1_000", 1), ("7, 1e-400", 2), ("5, inf", 2), ("nan", 1),
                                                ("0x10", 1), ("4, ５", 2), ("3, 1e999", 2)])
def test_parse_custom_refuses_what_python_float_accepts_but_is_no_scale(text, position):
    with pytest.raises(ValueError, match=f"value {position} "):
        parse_custom(text)


@pytest.mark.parametrize(("text", "expected"), [("1e1, .5, 2., +3", (10.0, 0.5, 2.0, 3.0)), ("0, 0.0e5", (0.0, 0.0))])
def test_parse_custom_accepts_plain_decimals(text, expected):
    assert parse_custom(text) == expected


@pytest.mark.parametrize("curve", sorted(SPEC_F))
def test_a_one_step_run_gets_the_cfg_whatever_the_curve(curve):
    schedule = ScaleSchedule(curve=curve, cfg_min=1.5, switch_at=SWITCH, exponent=EXPONENT)
    assert schedule.scale(7.0, 0, 1) == 7.0


def test_unused_custom_values_are_counted():
    schedule = ScaleSchedule(curve="custom", custom=(9.0, 6.0, 3.0, 2.0))
    assert [schedule.unused_values(steps) for steps in (1, 3, 4, 8)] == [3, 1, 0, 0]
    assert ScaleSchedule(curve="linear_down", custom=(9.0, 6.0)).unused_values(1) == 0
