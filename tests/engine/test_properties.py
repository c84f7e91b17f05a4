"""Property-based tests (hypothesis) of every engine function in guiders/: shapes and dtypes kept (fp32, fp16,
bf16), finite results from finite inputs (constant tensors, zero spread, zero vectors, large scales), rows of a batch
independent of each other, the identities (scale 1, φ 0, weight 0, empty windows), exact schedule endpoints for every
step count, and step attribution over random schedules and stage counts.

Magnitudes are those of real x0 predictions (|x| ≤ 30, scales ≤ 100), so every exact result is representable in
fp16; anything non-finite is then the function's doing.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from guiders import engine
from guiders.cfg import cfg
from guiders.cfg_pp import Level, ancestral_levels, ddim_step, dpmpp_2m_step, dpmpp_2s_midpoint, dpmpp_2s_stage
from guiders.engine import Recipe
from guiders.negatives import ExtraNegative, negative_direction
from guiders.perturbation import Perturbation, perturbation_term, rescaled
from guiders.schedule import CURVES, MCMONKEY_CURVES, ScaleSchedule
from guiders.skip import CFGSkip, noise_cosine
from guiders.steps import StepTracker, interval_step
from guiders.threshold import DynamicThreshold, imagen_threshold, mimic_threshold

FAST = settings(max_examples=25, deadline=None, database=None, derandomize=True)  # the same examples in every run
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def shapes(draw, min_spatial: int = 1) -> tuple[int, ...]:
    spatial = draw(st.lists(st.integers(min_spatial, 4), min_size=1, max_size=3))  # images, and video latents
    return (draw(st.integers(1, 3)), draw(st.integers(1, 4)), *spatial)


@st.composite
def tensors(draw, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Random, constant, zero or per-channel-flat tensors of real x0 magnitudes."""
    kind = draw(st.sampled_from(["random", "random", "constant", "zeros", "flat_channels", "tiny"]))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    if kind == "constant":
        return torch.full(shape, draw(st.floats(-30, 30)), dtype=dtype)
    if kind == "zeros":
        return torch.zeros(shape, dtype=dtype)
    if kind == "flat_channels":
        return (torch.randn(shape[:2], generator=generator) * 10).view(*shape[:2], *[1] * (len(shape) - 2)) \
            .expand(shape).to(dtype).contiguous()
    scale = 1e-3 if kind == "tiny" else draw(st.sampled_from([0.1, 1.0, 10.0]))
    return (torch.randn(shape, generator=generator) * scale).clamp(-30, 30).to(dtype)


@st.composite
def triples(draw, min_spatial: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three tensors of one shape and dtype: (cond, uncond, third) x0 predictions; the uncond is sometimes the cond."""
    dtype, shape = draw(st.sampled_from(DTYPES)), draw(shapes(min_spatial))
    cond = draw(tensors(shape, dtype))
    uncond = cond.clone() if draw(st.booleans()) and draw(st.booleans()) else draw(tensors(shape, dtype))
    return cond, uncond, draw(tensors(shape, dtype))


scales = st.one_of(st.sampled_from([0.0, 1.0, 100.0]), st.floats(0, 100))


def assert_like(result: torch.Tensor, reference: torch.Tensor) -> None:
    assert result.shape == reference.shape and result.dtype == reference.dtype
    assert torch.isfinite(result).all()


def assert_rows_independent(function, *batches: torch.Tensor) -> None:
    """Each row of the batched result equals the result of that row alone (bit for bit)."""
    together = function(*batches)
    for row in range(batches[0].shape[0]):
        alone = function(*(b[row:row + 1] for b in batches))
        assert torch.equal(together[row:row + 1], alone), row


# --- CFG, extra negatives, PAG -------------------------------------------------------------------------------------


@FAST
@given(triples(), scales)
def test_cfg(tensors3, scale):
    cond, uncond, _ = tensors3
    assert_like(cfg(cond, uncond, scale), cond)
    assert_rows_independent(lambda c, u: cfg(c, u, scale), cond, uncond)
    assert torch.equal(cfg(cond, uncond, 1.0), cond)
    assert torch.equal(cfg(cond, uncond, 0.0), uncond)


@FAST
@given(triples(), st.sampled_from(["subtract", "perpendicular"]))
def test_negative_direction(tensors3, mode):
    cond, uncond, negative = (t.float() for t in tensors3)  # fp16 / bf16: test_negative_direction_on_a_large_fp16…
    direction = negative_direction(negative, uncond, cond, mode)
    assert_like(direction, cond)
    assert_rows_independent(lambda n, u, c: negative_direction(n, u, c, mode), negative, uncond, cond)
    if mode == "perpendicular":  # orthogonal to D_c − D_u, per sample; D_n − D_u itself where D_c = D_u
        toward = (cond - uncond).flatten(1).double()
        dots = (direction.flatten(1).double() * toward).sum(1)
        away = (negative - uncond).flatten(1).double()  # float32 residue of the projection scales with |away|
        assert torch.all(dots.abs() <= 1e-5 * (1 + toward.norm(dim=1) * away.norm(dim=1)))
        same = (cond == uncond).flatten(1).all(1)
        assert torch.equal(direction[same], (negative - uncond)[same])


def test_negative_direction_on_a_large_fp16_latent():
    """A 128×128 SD latent (4×32×32 values per image) of x0 predictions in fp16."""
    generator = torch.Generator().manual_seed(0)
    cond, uncond, negative = ((torch.randn(2, 4, 32, 32, generator=generator) * 5).half() for _ in range(3))
    assert_like(negative_direction(negative, uncond, cond, "perpendicular"), cond)


@FAST
@given(triples(), scales)
def test_perturbation_term(tensors3, scale):
    cond, _, perturbed = tensors3
    assert_like(perturbation_term(cond, perturbed, scale), cond)
    assert_rows_independent(lambda c, p: perturbation_term(c, p, scale), cond, perturbed)
    assert not perturbation_term(cond, perturbed, 0.0).any()


@FAST
@given(triples(), st.floats(0, 1))
def test_rescaled(tensors3, rescale):
    guided, cond, _ = tensors3
    assert_like(rescaled(guided, cond, rescale), guided)
    assert_rows_independent(lambda g, c: rescaled(g, c, rescale), guided, cond)
    assert torch.equal(rescaled(guided, cond, 0.0), guided)


# --- dynamic thresholding --------------------------------------------------------------------------------------------


@st.composite
def threshold_settings(draw) -> DynamicThreshold:
    return DynamicThreshold(mode="latent", mimic_scale=draw(st.floats(1, 30)),
                            threshold_percentile=draw(st.floats(0.9, 1.0)),
                            startpoint=draw(st.sampled_from(["MEAN", "ZERO"])),
                            variability=draw(st.sampled_from(["AD", "STD"])),
                            interpolate_phi=draw(st.floats(0, 1)))


@FAST
@given(triples(min_spatial=2), threshold_settings())
def test_mimic_threshold(tensors3, threshold):
    guided, mimic, _ = tensors3
    result = mimic_threshold(guided, mimic, threshold)
    assert_like(result, guided)
    assert_rows_independent(lambda g, m: mimic_threshold(g, m, threshold), guided, mimic)
    identity = DynamicThreshold(**{**threshold.__dict__, "interpolate_phi": 0.0})
    assert torch.equal(mimic_threshold(guided, mimic, identity), guided)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mimic_threshold_on_one_element_channels(dtype):
    guided = torch.randn(2, 4, 1, 1, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert_like(mimic_threshold(guided, guided * 0.5, DynamicThreshold(variability="STD")), guided)


@FAST
@given(triples(), st.floats(0, 1))
def test_imagen_threshold(tensors3, percentile):
    x0 = tensors3[0]
    result = imagen_threshold(x0, percentile)
    assert_like(result, x0)
    assert result.float().abs().max() <= 1.0
    assert_rows_independent(lambda x: imagen_threshold(x, percentile), x0)


# --- CFG-skip, schedules ---------------------------------------------------------------------------------------------


@FAST
@given(triples())
def test_noise_cosine(tensors3):
    cond, uncond, x = tensors3
    cosine = noise_cosine(x, cond, uncond)
    assert cosine.shape == (x.shape[0],) and torch.isfinite(cosine).all()
    assert cosine.abs().max() <= 1 + 1e-5
    assert_rows_independent(noise_cosine, x, cond, uncond)
    assert torch.all(noise_cosine(x, x, uncond) == 0)  # a zero noise direction: no agreement, and no NaN


@FAST
@given(st.sampled_from([c for c in CURVES if c != "custom"]), st.integers(1, 60), st.floats(0, 30), st.floats(0, 30),
       st.floats(0, 1), st.floats(0.01, 10))
def test_schedule_endpoints_are_exact(curve, steps, cfg_scale, cfg_min, switch_at, exponent):
    schedule = ScaleSchedule(curve, cfg_min, switch_at, exponent)
    values = [schedule.scale(cfg_scale, step, steps) for step in range(steps)]
    assert all(math.isfinite(v) and min(cfg_scale, cfg_min) - 1e-9 <= v <= max(cfg_scale, cfg_min) + 1e-9
               for v in values)
    if curve in ("constant",):
        assert values == [cfg_scale] * steps
    elif curve in MCMONKEY_CURVES:  # one end at the start; half-cosines stop at cos 1, periodic ones come back
        assert values[0] == (cfg_min if curve in ("half_cosine_up", "sawtooth") else cfg_scale)
    elif curve.endswith("_down") and curve != "step_down":
        assert values[0] == cfg_scale and (steps == 1 or values[-1] == cfg_min)
    elif curve.endswith("_up") and curve != "step_up":
        assert steps == 1 or (values[0] == cfg_min and values[-1] == cfg_scale)
        assert values[0] in (cfg_min, cfg_scale)  # a 1-step run is at one end (which one is documented)
    else:  # step curves: every value at one end
        assert set(values) <= {cfg_scale, cfg_min}


@FAST
@given(st.lists(st.floats(0, 30), min_size=1, max_size=10), st.integers(1, 20))
def test_custom_schedule_holds_its_last_value(custom, steps):
    schedule = ScaleSchedule("custom", custom=tuple(custom))
    assert [schedule.scale(7.0, i, steps) for i in range(steps)] == [custom[min(i, len(custom) - 1)]
                                                                      for i in range(steps)]


# --- the planner and combine -----------------------------------------------------------------------------------------


SCHEDULE = [14.6, 8.0, 5.42, 2.9, 1.0, 0.28, 0.0]


@st.composite
def recipes(draw) -> Recipe:
    recipe = Recipe()
    if draw(st.booleans()):
        recipe = recipe.adding(ScaleSchedule(draw(st.sampled_from(["constant", "linear_down", "cosine_up"])),
                                             draw(st.floats(0, 10))))
    if draw(st.booleans()):
        recipe = recipe.adding(CFGSkip("percent", draw(st.floats(0, 1)), draw(st.floats(0, 1))))
    for _ in range(draw(st.integers(0, 2))):
        recipe = recipe.adding(ExtraNegative(None, draw(st.floats(0, 3)), draw(st.sampled_from(["subtract",
                                                                                                "perpendicular"]))))
    if draw(st.booleans()):
        high = draw(st.floats(0, 20))
        recipe = recipe.adding(Perturbation(draw(st.sampled_from(["pag", "seg", "skip"])), draw(st.floats(0, 5)),
                                            sigma_high=high, sigma_low=draw(st.floats(0, high)),
                                            adaptive_scale=draw(st.floats(0, 1)), rescale=draw(st.floats(0, 1))))
    if draw(st.booleans()):
        recipe = recipe.adding(draw(threshold_settings()))
    return recipe


@FAST
@given(recipes(), triples(min_spatial=2), st.floats(0, 15), st.integers(0, len(SCHEDULE) - 2))
def test_combine(recipe, tensors3, cfg_scale, step):
    cond, uncond, other = (t.float() for t in tensors3)

    def guided(c, u, o):
        plan = engine.plan(recipe, engine.new_run(SCHEDULE), cfg_scale, SCHEDULE[step], c.shape[0])
        return engine.combine(recipe, plan, c, u, [o] * len(plan.negatives), [o] * len(plan.perturbed))

    result = guided(cond, uncond, other)
    assert_like(result, cond)
    assert_rows_independent(guided, cond, uncond, other)
    plan = engine.plan(recipe, engine.new_run(SCHEDULE), cfg_scale, SCHEDULE[step], cond.shape[0])
    if not plan.with_uncond and not plan.perturbed:
        assert torch.equal(result, cond)  # nothing guides this evaluation: the cond exactly


@FAST
@given(recipes(), st.floats(0, 15))
def test_plan_identities(recipe, cfg_scale):
    run = engine.new_run(SCHEDULE)
    for step, sigma in enumerate(SCHEDULE[:-1]):
        plan = engine.plan(recipe, run, cfg_scale, sigma, 2)
        assert plan.step == step
        if math.isclose(plan.scale, 1.0) and not any(n.scale for n in recipe.negatives):
            assert not plan.with_uncond  # scale 1 drops the uncond
        if recipe.skip is not None and recipe.skip.start_percent > recipe.skip.end_percent:
            assert not plan.with_uncond  # an empty window guides no step
        for index, perturbation in enumerate(recipe.perturbations):
            if perturbation.scale == 0 or not perturbation.sigma_low <= sigma <= perturbation.sigma_high:
                assert index not in plan.perturbed  # weight 0 or outside the window: no perturbed rows
        assert all(recipe.negatives[index].scale != 0 for index in plan.negatives)  # weight 0: no rows


@FAST
@given(triples(min_spatial=2), st.floats(0, 15))
def test_a_zero_weight_negative_changes_nothing(tensors3, cfg_scale):
    cond, uncond, negative = (t.float() for t in tensors3)
    with_zero = Recipe(negatives=(ExtraNegative(None, 0.0),))
    plan = engine.plan(with_zero, engine.new_run(SCHEDULE), cfg_scale, SCHEDULE[0], cond.shape[0])
    assert not plan.negatives
    expected = cfg(cond, uncond, cfg_scale) if plan.with_uncond else cond
    assert torch.equal(engine.combine(with_zero, plan, cond, uncond), expected)


# --- CFG++ steps -----------------------------------------------------------------------------------------------------


@st.composite
def levels(draw, flow: bool) -> tuple[Level, Level, Level]:
    """Three levels r → s → t with σ_r > σ_s > σ_t > 0 on an EPS (α = 1) or flow (α = 1 − σ) path (0-dim tensors)."""
    sigma_r = draw(st.floats(0.05, 0.999 if flow else 14.6))
    sigma_s = sigma_r * draw(st.floats(0.1, 0.9))
    sigma_t = sigma_s * draw(st.floats(0.05, 0.95))

    def level(sigma: float) -> Level:
        return Level(torch.tensor(sigma), torch.tensor(1 - sigma if flow else 1.0))

    return level(sigma_r), level(sigma_s), level(sigma_t)


@FAST
@given(st.booleans().flatmap(levels), triples(), st.floats(0, 4))
def test_cfg_pp_steps(r_s_t, tensors3, eta):
    r, s, t = r_s_t
    denoised, uncond, x = (v.float() for v in tensors3)
    down, sigma_up = ancestral_levels(s, t, eta)
    assert torch.isfinite(down.sigma) and 0 <= float(down.sigma) <= float(t.sigma) * (1 + 1e-6)
    assert float(down.sigma) ** 2 + float(sigma_up) ** 2 == pytest.approx(float(t.sigma) ** 2, rel=1e-5)
    if eta == 0:
        assert down == t and float(sigma_up) == 0
    mid = dpmpp_2s_midpoint(s, t)
    assert float(s.half_log_snr) <= float(mid) <= float(t.half_log_snr)
    for result in (ddim_step(x, denoised, uncond, s, t), dpmpp_2m_step(x, denoised, uncond, s, t, (uncond, r)),
                   dpmpp_2m_step(x, denoised, uncond, s, t, None), dpmpp_2s_stage(x, denoised, uncond, s, t, denoised)):
        assert_like(result, x)
    assert_rows_independent(lambda xx, d, u: ddim_step(xx, d, u, s, t), x, denoised, uncond)
    # With D_λ = D_u (λ = 1 on an unguided step) CFG++ DDIM is plain DDIM.
    plain = t.alpha * uncond + t.sigma * (x - s.alpha * uncond) / s.sigma
    torch.testing.assert_close(ddim_step(x, uncond, uncond, s, t), plain)


# --- step attribution ------------------------------------------------------------------------------------------------


@st.composite
def monotone_schedules(draw) -> list[float]:
    values = sorted(draw(st.lists(st.floats(0.01, 15), min_size=2, max_size=12, unique=True)), reverse=True)
    values = [float(torch.tensor(v, dtype=torch.float32)) for v in values]
    if len(set(values)) < len(values):
        values = sorted(set(values), reverse=True) + [0.0]
    return values if draw(st.booleans()) else values[::-1]


def _separated(schedule: list[float]) -> bool:
    return all(not math.isclose(a, b, rel_tol=1e-3) for a, b in zip(schedule, schedule[1:], strict=False))


@FAST
@given(monotone_schedules(), st.floats(0, 1))
def test_interval_step_of_decreasing_and_flipped_schedules(schedule, position):
    steps = len(schedule) - 1
    if not _separated(schedule):
        return
    for i in range(steps):
        assert interval_step(schedule[i], schedule) == i  # a step's own sigma starts it, either direction
        # at least a tenth of the step away from its end, far beyond interval_step's 1e-5 relative tolerance
        inside = schedule[i] + (schedule[i + 1] - schedule[i]) * position * 0.9
        assert interval_step(inside, schedule) == i
    assert 0 <= interval_step(100.0, schedule) < steps and 0 <= interval_step(-1.0, schedule) < steps


@FAST
@given(st.lists(st.integers(1, 3), min_size=1, max_size=12), st.booleans(), st.data())
def test_counted_attribution_with_and_without_callbacks(counts, callbacks, data):
    """Known counts: every evaluation gets its step, whatever the sigmas (here: all equal, the worst case)."""
    tracker = StepTracker([1.0] * (len(counts) + 1), counts)
    for step, count in enumerate(counts):
        for k in range(count):
            assert tracker.step(1.0) == step
            if callbacks and k == 0:
                tracker.reached(step)


@FAST
@given(st.lists(st.integers(1, 3), min_size=2, max_size=12), st.lists(st.integers(1, 3), min_size=12, max_size=12))
def test_callbacks_resynchronise_a_wrong_count(true_counts, assumed):
    """Counts that disagree with the sampler: the first evaluation after each callback of a single-evaluation step
    still lands right, and no evaluation is attributed outside [callback step, callback step + 1]."""
    tracker = StepTracker([1.0] * (len(true_counts) + 1), assumed[:len(true_counts)])
    for step, count in enumerate(true_counts):
        for k in range(count):
            attributed = tracker.step(1.0)
            if k == 0:
                tracker.reached(step)
            else:
                assert step <= attributed <= step + 1
