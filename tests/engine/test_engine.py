"""The step engine: which branches an evaluation computes (plan), the adaptive switch (observe), and combine."""

import itertools

import pytest
import torch
from reference import quantile

from guiders import engine
from guiders.engine import Plan, Recipe
from guiders.negatives import ExtraNegative
from guiders.perturbation import Perturbation
from guiders.schedule import ScaleSchedule
from guiders.skip import CFGSkip
from guiders.steps import unless_final_evaluations
from guiders.threshold import DynamicThreshold

SCHEDULE = [10.0, 6.36, 3.92, 2.33, 1.33, 0.72, 0.37, 0.18, 0.077, 0.03, 0.0]  # 10 steps
STEPS = len(SCHEDULE) - 1


def heun_sigmas(schedule=SCHEDULE) -> list[tuple[int, float]]:
    """(step, sigma) of every evaluation of a Heun run: s_i, then the corrector at s_{i+1} (not in the last step)."""
    out = []
    for i in range(len(schedule) - 1):
        out.append((i, schedule[i]))
        if schedule[i + 1] != 0:
            out.append((i, schedule[i + 1]))
    return out


def first_plan_of_each_step(recipe: Recipe, cfg_scale: float, batch: int = 2, **kwargs) -> dict[int, Plan]:
    run = engine.new_run(SCHEDULE)
    return {i: engine.plan(recipe, run, cfg_scale, SCHEDULE[i], batch, **kwargs) for i in range(STEPS)}


def tensors(seed: int, shape=(3, 4, 8, 8), count: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(count)]


# --- plan: which branches -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cfg_scale", "keep", "with_uncond"), [
    (1.0, False, False), (1.0, True, True), (7.0, False, True), (0.0, False, True), (1.5, True, True),
])
def test_plan_without_components(cfg_scale, keep, with_uncond):
    run = engine.new_run(SCHEDULE)
    step = engine.plan(Recipe(), run, cfg_scale, SCHEDULE[0], 3, keep_uncond=keep)
    assert step.step == 0 and step.scale == cfg_scale
    assert step.with_uncond is with_uncond and step.with_negatives is False
    assert step.guided.dtype == torch.bool and step.guided.shape == (3,)
    assert step.guided.tolist() == [with_uncond] * 3


def test_negatives_need_the_uncond_even_at_scale_one():
    recipe = Recipe().adding(ExtraNegative("blurry", 0.5))
    step = engine.plan(recipe, engine.new_run(SCHEDULE), 1.0, SCHEDULE[0], 2)
    assert step.with_uncond is True and step.with_negatives is True
    assert step.guided.tolist() == [True, True]


@pytest.mark.parametrize("recipe", [Recipe(), Recipe(negatives=(ExtraNegative("x"),)),
                                    Recipe(skip=CFGSkip(mode="adaptive"))])
@pytest.mark.parametrize(("cfg_scale", "keep"), [(7.0, False), (1.0, True), (1.0, False)])
def test_no_uncond_to_guide_against_means_never(recipe, cfg_scale, keep):
    run = engine.new_run(SCHEDULE)
    for _, sigma in heun_sigmas():
        step = engine.plan(recipe, run, cfg_scale, sigma, 2, keep_uncond=keep, has_uncond=False)
        assert step.with_uncond is False and step.with_negatives is False
        assert step.guided.tolist() == [False, False]


@pytest.mark.parametrize("keep", [False, True])
def test_skipped_steps_compute_no_uncond_even_when_kept(keep):
    recipe = Recipe(skip=CFGSkip(mode="percent", start_percent=0.4, end_percent=1.0),
                    negatives=(ExtraNegative("x"),))
    plans = first_plan_of_each_step(recipe, 7.0, keep_uncond=keep)
    assert [i for i, p in plans.items() if p.with_uncond] == [4, 5, 6, 7, 8, 9]
    for i, p in plans.items():
        assert p.with_negatives is p.with_uncond
        assert p.guided.tolist() == [i >= 4] * 2


def test_sigma_skip_through_the_engine():
    recipe = Recipe(skip=CFGSkip(mode="sigma", sigma_low=0.5, sigma_high=3.92))
    plans = first_plan_of_each_step(recipe, 5.0)
    assert [i for i, p in plans.items() if p.with_uncond] == [2, 3, 4, 5]  # 3.92, 2.33, 1.33, 0.72


def test_scheduled_scale_reaching_one_drops_the_uncond_on_the_last_step():
    recipe = Recipe(schedule=ScaleSchedule(curve="linear_down", cfg_min=1.0))
    plans = first_plan_of_each_step(recipe, 10.0)
    assert [p.scale for p in plans.values()] == pytest.approx([10.0 - i for i in range(10)])
    assert plans[9].scale == 1.0
    assert [p.with_uncond for p in plans.values()] == [True] * 9 + [False]
    kept = first_plan_of_each_step(recipe, 10.0, keep_uncond=True)
    assert kept[9].with_uncond is True


@pytest.mark.parametrize(("skip", "guided_steps"), [
    (CFGSkip(mode="percent", start_percent=0.4, end_percent=1.0), range(4, 10)),
    (CFGSkip(mode="sigma", sigma_low=0.5, sigma_high=3.92), range(2, 6)),  # s_2 = 3.92 … s_5 = 0.72
])
def test_every_evaluation_of_a_heun_step_shares_its_decisions(skip, guided_steps):
    """The corrector of step i runs at s_{i+1}; it must get step i's scale and skip decision, not step i+1's."""
    recipe = Recipe(schedule=ScaleSchedule(curve="linear_up", cfg_min=2.0), skip=skip)
    run = engine.new_run(SCHEDULE, unless_final_evaluations(torch.tensor(SCHEDULE)))
    for step, sigma in heun_sigmas():
        p = engine.plan(recipe, run, 11.0, sigma, 2)
        assert p.step == step
        assert p.scale == pytest.approx(2.0 + 9.0 * step / 9)
        assert p.with_uncond is (step in guided_steps), (step, sigma)


# --- combine ---------------------------------------------------------------------------------------------------------

def reference_mean_ad(guided: torch.Tensor, mimic: torch.Tensor, percentile: float) -> torch.Tensor:
    """mcmonkey's MEAN start point, AD variability, per (sample, channel), φ = 1."""
    out = torch.empty(guided.shape, dtype=torch.float64)
    for b in range(guided.shape[0]):
        for c in range(guided.shape[1]):
            cfg, mim = guided[b, c].double(), mimic[b, c].double()
            cfg_c, mim_c = cfg - cfg.mean(), mim - mim.mean()
            mim_ref = float(mim_c.abs().max())
            cfg_ref = quantile(cfg_c.abs().flatten().tolist(), percentile)
            m = max(mim_ref, cfg_ref)
            out[b, c] = cfg_c.clamp(-m, m) / m * mim_ref + cfg.mean()
    return out


def reference_imagen(x0: torch.Tensor, p: float) -> torch.Tensor:
    out = torch.empty(x0.shape, dtype=torch.float64)
    for b in range(x0.shape[0]):
        s = max(1.0, quantile(x0[b].double().abs().flatten().tolist(), p))
        out[b] = x0[b].double().clamp(-s, s) / s
    return out


def reference_perpendicular(away: torch.Tensor, toward: torch.Tensor) -> torch.Tensor:
    out = away.clone()
    for b in range(away.shape[0]):
        norm2 = float((toward[b] * toward[b]).sum())
        if norm2 > 0:
            out[b] = away[b] - toward[b] * float((away[b] * toward[b]).sum()) / norm2
    return out


def reference_combine(recipe: Recipe, scale: float, d_c, d_u, d_ns) -> torch.Tensor:
    """D = D_u + s(D_c − D_u) − Σ w·dir, then thresholding; all in float64."""
    d_c, d_u = d_c.double(), d_u.double()
    out = d_u + scale * (d_c - d_u)
    for negative, d_n in zip(recipe.negatives, d_ns, strict=True):
        away = d_n.double() - d_u
        out = out - negative.scale * (away if negative.mode == "subtract" else reference_perpendicular(away, d_c - d_u))
    if recipe.threshold is not None:
        if recipe.threshold.mode == "imagen":
            out = reference_imagen(out, recipe.threshold.percentile)
        else:
            out = reference_mean_ad(out, d_u + recipe.threshold.mimic_scale * (d_c - d_u),
                                    recipe.threshold.percentile)
    return out


NEGATIVES = (ExtraNegative("a", 0.6, "subtract"), ExtraNegative("b", 1.3, "perpendicular"))
RECIPES = {
    "cfg": Recipe(),
    "negatives": Recipe(negatives=NEGATIVES),
    "latent": Recipe(threshold=DynamicThreshold(mimic_scale=3.0, threshold_percentile=0.95)),
    "imagen": Recipe(threshold=DynamicThreshold(mode="imagen", threshold_percentile=0.9)),
    "all_latent": Recipe(threshold=DynamicThreshold(mimic_scale=2.5), negatives=NEGATIVES),
    "all_imagen": Recipe(threshold=DynamicThreshold(mode="imagen", threshold_percentile=0.995), negatives=NEGATIVES),
}


def all_guided_plan(recipe: Recipe, scale: float, batch: int = 3) -> Plan:
    """A plan with every sample guided; keep_uncond so that scale 1 computes the uncond too."""
    step = engine.plan(recipe, engine.new_run(SCHEDULE), scale, SCHEDULE[0], batch, keep_uncond=True)
    assert step.with_uncond and step.guided.all()
    return step


def mixed_plan(recipe: Recipe, scale: float) -> Plan:
    """Step 1 of a run with adaptive skip where sample 1 switched at step 0: guided [True, False, True]."""
    recipe = recipe.adding(CFGSkip(mode="adaptive", threshold=THRESHOLD))
    run = engine.new_run(SCHEDULE)
    first = engine.plan(recipe, run, scale, SCHEDULE[0], 3)
    engine.observe(recipe, run, first, *branch_outputs(300, [False, True, False]))
    step = engine.plan(recipe, run, scale, SCHEDULE[1], 3)
    assert step.guided.tolist() == [True, False, True] and step.with_uncond
    return step


def stand_in(step: Plan, d_c: torch.Tensor, d_u: torch.Tensor) -> torch.Tensor:
    """What the adapter passes as the uncond: the cond where the sample is not guided."""
    return engine.where_guided(step, d_u, d_c)


@pytest.mark.parametrize("name", sorted(RECIPES))
@pytest.mark.parametrize("scale", [7.5, 1.0])
def test_combine_guided_samples_follow_the_formula(name, scale):
    recipe = RECIPES[name]
    d_c, d_u, *d_ns = tensors(40, count=2 + len(recipe.negatives))
    step = all_guided_plan(recipe, scale)
    assert step.scale == scale and step.with_negatives is bool(recipe.negatives)
    got = engine.combine(recipe, step, d_c, stand_in(step, d_c, d_u), d_ns)
    assert got.shape == d_c.shape and got.dtype == d_c.dtype
    torch.testing.assert_close(got.double(), reference_combine(recipe, scale, d_c, d_u, d_ns), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_combine_returns_the_cond_exactly_for_unguided_samples(name):
    recipe = RECIPES[name]
    d_c, d_u, *d_ns = tensors(41, count=2 + len(recipe.negatives))
    step = mixed_plan(recipe, 6.0)
    stood_in = stand_in(step, d_c, d_u)
    assert torch.equal(stood_in[1], d_c[1]) and torch.equal(stood_in[0], d_u[0]) and torch.equal(stood_in[2], d_u[2])
    got = engine.combine(recipe.adding(CFGSkip(mode="adaptive")), step, d_c, stood_in, d_ns)
    assert torch.equal(got[1], d_c[1])
    expected = reference_combine(recipe, 6.0, d_c[[0, 2]], d_u[[0, 2]], [d[[0, 2]] for d in d_ns])
    torch.testing.assert_close(got[[0, 2]].double(), expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_combine_without_uncond_is_the_cond(name):
    recipe = RECIPES[name]
    d_c, d_u = tensors(42, count=2)
    step = engine.plan(recipe, engine.new_run(SCHEDULE), 1.0 if not recipe.negatives else 7.0, SCHEDULE[0], 3,
                       has_uncond=not recipe.negatives)
    assert step.with_uncond is False and not step.guided.any()
    assert torch.equal(engine.combine(recipe, step, d_c, stand_in(step, d_c, d_u), ()), d_c)


def test_stand_in_with_every_sample_guided_is_the_branch():
    d_c, d_u = tensors(43, count=2)
    assert stand_in(all_guided_plan(Recipe(), 7.0), d_c, d_u) is d_u


def test_combine_passes_the_step_scale_to_a_foreign_cfg_rule():
    d_c, d_u = tensors(44, count=2)
    seen = []

    def rule(cond, uncond, scale):
        seen.append(scale)
        return cond * 0 + scale

    recipe = Recipe(schedule=ScaleSchedule(curve="linear_down", cfg_min=2.0))
    step = engine.plan(recipe, engine.new_run(SCHEDULE), 11.0, SCHEDULE[3], 3)
    assert step.scale == pytest.approx(8.0)
    out = engine.combine(recipe, step, d_c, d_u, (), cfg_rule=rule)
    assert seen == [step.scale] and torch.equal(out, torch.full_like(d_c, step.scale))


def test_combine_batch_rows_are_independent():
    recipe = RECIPES["all_latent"]
    d_c, d_u, n1, n2 = tensors(45, count=4)
    step = all_guided_plan(recipe, 6.0)
    whole = engine.combine(recipe, step, d_c, d_u, (n1, n2))
    changed = d_u.clone()
    changed[2] = changed[2] * 4 - 1
    other = engine.combine(recipe, step, d_c, changed, (n1, n2))
    assert torch.equal(other[0], whole[0]) and torch.equal(other[1], whole[1])
    assert not torch.allclose(other[2], whole[2])


# --- adaptive skip ---------------------------------------------------------------------------------------------------

def cosine(x, d_c, d_u) -> list[float]:
    a, b = (x - d_c).double().flatten(1), (x - d_u).double().flatten(1)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).tolist()


def branch_outputs(seed: int, agree: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, D_c, D_u where the samples marked `agree` have cos(x − D_c, x − D_u) ≈ 0.9999, the others ≈ 0.7."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(agree), 4, 8, 8, generator=g) * 5
    d_c = torch.randn(len(agree), 4, 8, 8, generator=g)
    spread = torch.tensor([0.05 if a else 5.0 for a in agree]).view(-1, 1, 1, 1)
    d_u = d_c + torch.randn(len(agree), 4, 8, 8, generator=g) * spread
    return x, d_c, d_u


THRESHOLD = 0.99


def test_adaptive_switches_per_sample_from_the_next_step():
    recipe = Recipe(skip=CFGSkip(mode="adaptive", threshold=THRESHOLD))
    run = engine.new_run(SCHEDULE, unless_final_evaluations(torch.tensor(SCHEDULE)))
    # Sample 1 agrees from step 2 on, sample 0 only at step 2's corrector evaluation, sample 2 never.
    agreement = {(2, 0): [False, True, False], (2, 1): [True, True, False]}
    history = []
    for k, (step, sigma) in enumerate(heun_sigmas()):
        evaluation = 0 if k == 0 or history[-1][0] != step else 1
        p = engine.plan(recipe, run, 7.0, sigma, 3)
        guided_before = p.guided.clone()
        history.append((step, p.guided.tolist()))
        assert p.step == step
        if p.with_uncond:
            agree = agreement.get((step, evaluation), [step > 2, step > 2, False])
            x, d_c, d_u = branch_outputs(100 + k, agree)
            cos = cosine(x, d_c, d_u)
            assert [c >= THRESHOLD for c in cos] == agree  # the inputs are on the intended side
            engine.observe(recipe, run, p, x, d_c, d_u)
            assert torch.equal(p.guided, guided_before)  # observing never rewrites the plan of its own step
    by_step: dict[int, list[list[bool]]] = {}
    for step, guided in history:
        by_step.setdefault(step, []).append(guided)
    for step, plans in by_step.items():
        assert all(g == plans[0] for g in plans), (step, plans)  # one decision per step
        expected = [True, True, True] if step <= 2 else [False, False, True]
        assert plans[0] == expected, (step, plans)


def test_adaptive_switch_is_not_undone_and_all_switched_drops_the_uncond():
    recipe = Recipe(skip=CFGSkip(mode="adaptive", threshold=THRESHOLD))
    run = engine.new_run(SCHEDULE)
    p0 = engine.plan(recipe, run, 7.0, SCHEDULE[0], 2)
    x, d_c, d_u = branch_outputs(200, [True, False])
    engine.observe(recipe, run, p0, x, d_c, d_u)
    p1 = engine.plan(recipe, run, 7.0, SCHEDULE[1], 2)
    assert p1.guided.tolist() == [False, True] and p1.with_uncond
    # Sample 0 now disagrees, but it stays unguided; sample 1 agrees and switches.
    x, d_c, d_u = branch_outputs(201, [False, True])
    engine.observe(recipe, run, p1, x, d_c, d_u)
    for i in range(2, STEPS):
        p = engine.plan(recipe, run, 7.0, SCHEDULE[i], 2)
        assert p.guided.tolist() == [False, False] and p.with_uncond is False


def test_adaptive_ignores_evaluations_without_uncond():
    recipe = Recipe(skip=CFGSkip(mode="adaptive", threshold=THRESHOLD))
    run = engine.new_run(SCHEDULE)
    p = engine.plan(recipe, run, 1.0, SCHEDULE[0], 2)  # scale 1: no uncond, nothing to compare
    assert p.with_uncond is False
    x, d_c, _ = branch_outputs(202, [True, True])
    engine.observe(recipe, run, p, x, d_c, d_c)
    assert engine.plan(recipe, run, 7.0, SCHEDULE[1], 2).guided.tolist() == [True, True]


def test_other_skip_modes_do_not_observe():
    recipe = Recipe(skip=CFGSkip(mode="percent", start_percent=0.0, end_percent=1.0, threshold=THRESHOLD))
    run = engine.new_run(SCHEDULE)
    p = engine.plan(recipe, run, 7.0, SCHEDULE[0], 2)
    x, d_c, d_u = branch_outputs(203, [True, True])
    engine.observe(recipe, run, p, x, d_c, d_u)
    assert engine.plan(recipe, run, 7.0, SCHEDULE[1], 2).guided.tolist() == [True, True]


# --- Recipe ----------------------------------------------------------------------------------------------------------

def test_recipe_slots_replace_and_negatives_accumulate():
    first, second = ScaleSchedule(curve="linear_up"), ScaleSchedule(curve="cosine_down", cfg_min=2.0)
    t1, t2 = DynamicThreshold(mimic_scale=4.0), DynamicThreshold(mode="imagen")
    s1, s2 = CFGSkip(mode="sigma"), CFGSkip(mode="adaptive")
    n1, n2 = ExtraNegative("a"), ExtraNegative("b", 0.5, "perpendicular")
    recipe = Recipe()
    for component in (first, t1, s1, n1, second, t2, s2, n2):
        recipe = recipe.adding(component)
    assert recipe.schedule is second and recipe.threshold is t2 and recipe.skip is s2
    assert recipe.negatives == (n1, n2)
    assert Recipe().adding(first) == Recipe(schedule=first)
    base = Recipe()
    base.adding(first)
    assert base == Recipe()  # adding returns a new recipe


def test_perturbations_accumulate_and_single_slots_say_what_they_replace():
    p1, p2 = Perturbation("pag", 3.0), Perturbation("seg", 1.5, (("output", 1, 0),), 5.0, 0.5)
    recipe = Recipe().adding(p1).adding(p2)
    assert recipe.perturbations == (p1, p2)
    assert recipe.replaced(Perturbation()) is None and recipe.replaced(ExtraNegative("a")) is None
    first = ScaleSchedule(curve="linear_up")
    assert recipe.replaced(first) is None
    assert recipe.adding(first).replaced(ScaleSchedule(curve="custom", custom=(2.0,))) is first


def test_a_zero_weight_costs_no_rows():
    zero, half = ExtraNegative("a", 0.0), ExtraNegative("b", 0.5)
    # Only zero-weight negatives at scale 1: no uncond at all.
    step = engine.plan(Recipe(negatives=(zero,)), engine.new_run(SCHEDULE), 1.0, SCHEDULE[0], 2)
    assert step.with_uncond is False and step.negatives == ()
    step = engine.plan(Recipe(negatives=(zero, half, zero)), engine.new_run(SCHEDULE), 5.0, SCHEDULE[0], 2)
    assert step.negatives == (1,)
    step = engine.plan(Recipe(perturbations=(Perturbation(scale=0.0), Perturbation(scale=2.0))),
                       engine.new_run(SCHEDULE), 1.0, SCHEDULE[0], 2)
    assert step.with_uncond is False and step.perturbed == (1,)


def test_combine_applies_each_computed_negative_and_pag_term_by_index():
    d_c, d_u, d_n, p1, p2 = tensors(77, count=5)
    recipe = Recipe(negatives=(ExtraNegative("zero", 0.0), ExtraNegative("n", 0.4)),
                    perturbations=(Perturbation(scale=2.0), Perturbation(scale=0.0), Perturbation(scale=0.5)))
    step = engine.plan(recipe, engine.new_run(SCHEDULE), 6.0, SCHEDULE[0], 3)
    assert step.negatives == (1,) and step.perturbed == (0, 2)
    out = engine.combine(recipe, step, d_c, d_u, [d_n], [p1, p2])
    expected = d_u + (d_c - d_u) * 6.0 - 0.4 * (d_n - d_u) + (d_c - p1) * 2.0 + (d_c - p2) * 0.5
    torch.testing.assert_close(out, expected)


def test_recipe_order_of_adding_does_not_matter():
    components = [ScaleSchedule(curve="power_up", exponent=3.0), DynamicThreshold(variability="STD"),
                  CFGSkip(mode="percent", start_percent=0.2), ExtraNegative("a")]
    recipes = []
    for order in itertools.permutations(components):
        recipe = Recipe()
        for component in order:
            recipe = recipe.adding(component)
        recipes.append(recipe)
    assert all(r == recipes[0] for r in recipes)
    assert recipes[0] == Recipe(*components[:3], negatives=(components[3],))


def test_recipe_order_with_two_negatives_differs_only_in_their_order():
    schedule, n1, n2 = ScaleSchedule(curve="linear_down"), ExtraNegative("a"), ExtraNegative("b")
    results = []
    for order in itertools.permutations([schedule, n1, n2]):
        recipe = Recipe()
        for component in order:
            recipe = recipe.adding(component)
        results.append(recipe)
    assert all(r.schedule is schedule and set(map(id, r.negatives)) == {id(n1), id(n2)} for r in results)
    assert {tuple(map(id, r.negatives)) for r in results} == {(id(n1), id(n2)), (id(n2), id(n1))}


def test_adaptive_does_not_decide_on_pure_noise():
    # On flow models α = 1 − σ is 0 at σ = 1: the noise prediction is x itself for every prompt.
    recipe = Recipe(skip=CFGSkip(mode="adaptive", threshold=THRESHOLD))
    run = engine.new_run(SCHEDULE)
    p = engine.plan(recipe, run, 7.0, SCHEDULE[0], 2)
    x, d_c, d_u = branch_outputs(204, [True, True])
    engine.observe(recipe, run, p, x, d_c, d_u, torch.tensor([0.0, 1.0]).view(-1, 1, 1, 1))
    assert engine.plan(recipe, run, 7.0, SCHEDULE[1], 2).guided.tolist() == [True, False]


def test_thresholding_follows_its_mimic_schedule():
    """mcmonkey's mimic_mode: each step thresholds towards CFG at that step's mimic scale (7 → 1 linearly over the
    10 steps, with the cfg schedule independent of it), not at the fixed mimic_scale."""
    threshold = DynamicThreshold(mimic_scale=7.0, mimic_schedule=ScaleSchedule("linear_down", cfg_min=1.0))
    recipe = Recipe(threshold=threshold, schedule=ScaleSchedule("linear_up", cfg_min=9.0))
    plans = first_plan_of_each_step(recipe, 12.0, batch=3)
    assert [plans[i].mimic_scale for i in range(STEPS)] == pytest.approx([7.0 - 6.0 * i / 9 for i in range(STEPS)])
    assert [plans[i].scale for i in range(STEPS)] == pytest.approx([9.0 + 3.0 * i / 9 for i in range(STEPS)])
    d_c, d_u = tensors(45, count=2)
    for i in (0, 4, 9):
        expected = reference_mean_ad(d_u.double() + plans[i].scale * (d_c.double() - d_u.double()),
                                     d_u.double() + plans[i].mimic_scale * (d_c.double() - d_u.double()), 1.0)
        torch.testing.assert_close(engine.combine(recipe, plans[i], d_c, d_u).double(), expected, rtol=1e-5,
                                   atol=2e-5)
    constant = first_plan_of_each_step(Recipe(threshold=DynamicThreshold(mimic_scale=4.5)), 12.0)
    assert {plan.mimic_scale for plan in constant.values()} == {4.5}
