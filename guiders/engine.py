"""The step engine: which branches one model evaluation needs, and how their x0 predictions combine.

A `Recipe` is the immutable set of guidance components on a model. For each evaluation `plan` decides
  - the scale: the sampler's / guider's cfg, or the scheduled one;
  - which samples are guided: CFG-skip can leave steps (or, adaptively, samples) conditional-only;
  - which branches to compute: the cond always; the uncond and the extra negatives of non-zero weight only if some
    sample is guided and guidance changes something (scale ≠ 1, or such a negative present); the perturbed cond of
    each perturbation (PAG, SEG, skip-layer) whose σ window holds this evaluation's σ and whose (faded) scale is not 0.
    A branch whose weight is 0 costs no rows.
`combine` then applies the components in one fixed order:
  1. CFG at the step's scale: `D = D_u + s·(D_c − D_u)` (or a foreign CFG function, at the same scale);
  2. extra negatives: `D −= w·(D_n − D_u)` or its part orthogonal to `D_c − D_u`;
     samples that CFG-skip leaves unguided take `D_c` exactly instead of 1–2;
  3. perturbations, in the order they were added: `D += s_p·(D_c − D̂_c)`, then, where the perturbation asks for it,
     `D` rescaled per image towards the spread of `D_c` (independent of CFG: they also work at scale 1 and on
     CFG-skipped steps);
  4. dynamic thresholding of D on CFG-guided samples (latent: towards the spread of CFG at the step's mimic scale;
     imagen: percentile clamp).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .cfg import cfg
from .negatives import ExtraNegative, negative_direction
from .perturbation import Perturbation, perturbation_term, rescaled
from .schedule import ScaleSchedule
from .skip import CFGSkip, noise_cosine
from .steps import StepTracker
from .threshold import DynamicThreshold, imagen_threshold, mimic_threshold
from .trace import Trace, norms, record

CFGRule = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
Component = ScaleSchedule | DynamicThreshold | CFGSkip | ExtraNegative | Perturbation
SINGLE_SLOTS = {ScaleSchedule: "schedule", DynamicThreshold: "threshold", CFGSkip: "skip"}


@dataclass(frozen=True)
class Recipe:
    """The guidance components on a model.

    Extra negatives and perturbations accumulate: each is its own branch of the same batched call, with its own
    weight (and, for a perturbation, its own kind, blocks and window). A scale schedule, a threshold and a CFG-skip
    can only hold once: a later one replaces the earlier (`replaced` tells the adapter which, so it can say so).
    """

    schedule: ScaleSchedule | None = None
    threshold: DynamicThreshold | None = None
    skip: CFGSkip | None = None
    negatives: tuple[ExtraNegative, ...] = ()
    perturbations: tuple[Perturbation, ...] = ()

    def adding(self, component: Component) -> Recipe:
        if isinstance(component, ExtraNegative):
            return replace(self, negatives=(*self.negatives, component))
        if isinstance(component, Perturbation):
            return replace(self, perturbations=(*self.perturbations, component))
        return replace(self, **{SINGLE_SLOTS[type(component)]: component})

    @property
    def fades(self) -> bool:
        """Whether a perturbation's scale depends on the timestep (its adaptive scale is set)."""
        return any(perturbation.adaptive_scale != 0 for perturbation in self.perturbations)

    def replaced(self, component: Component) -> ScaleSchedule | DynamicThreshold | CFGSkip | None:
        """The component that adding `component` would replace, if any."""
        slot = SINGLE_SLOTS.get(type(component))
        return getattr(self, slot) if slot else None


@dataclass
class RunState:
    """What one sampling run remembers between evaluations: its steps and the adaptive skip's switches."""

    tracker: StepTracker
    switched_at: torch.Tensor | None = None  # per sample: first step that is conditional-only (adaptive skip)
    trace: Trace | None = None  # what each evaluation did, for SteerTrace; None costs nothing


@dataclass(frozen=True)
class Plan:
    step: int
    scale: float
    guided: torch.Tensor  # bool per sample
    with_uncond: bool
    negatives: tuple[int, ...]  # indices into recipe.negatives computed at this evaluation
    perturbed: tuple[int, ...]  # indices into recipe.perturbations computed at this evaluation
    perturbed_scales: tuple[float, ...]  # their (adaptively faded) scales at this evaluation
    mimic_scale: float = 0.0  # dynamic thresholding's (scheduled) mimic scale at this step

    @property
    def with_negatives(self) -> bool:
        return bool(self.negatives)

    @property
    def with_perturbed(self) -> bool:
        return bool(self.perturbed)


def needs_uncond(scale: float, keep_uncond: bool = False) -> bool:
    """Whether the uncond changes the result at `scale`: not at 1, where CFG collapses to the cond.

    `keep_uncond` forces it (ComfyUI's `disable_cfg1_optimization`, set by samplers that renoise with the uncond).
    """
    return keep_uncond or not math.isclose(scale, 1.0)


def new_run(schedule: Sequence[float], evaluations: Sequence[int] | None = None,
            trace: Trace | None = None) -> RunState:
    """A run over `schedule`; `evaluations` per step where the sampler's stages are known (guiders/steps.py)."""
    return RunState(StepTracker(schedule, evaluations), trace=trace)


def plan(recipe: Recipe, run: RunState, cfg_scale: float, sigma: float, batch: int,
         keep_uncond: bool = False, has_uncond: bool = True, timestep: float = 1000.0) -> Plan:
    """Decide the scale, the guided samples and the branches of one evaluation at `sigma`.

    `has_uncond` is False where there is no negative to guide against (BasicGuider): every step is cond-only.
    `timestep` is the model's timestep at `sigma` on a 0–1000 scale (for perturbations' adaptive scale).
    """
    tracker = run.tracker
    step = tracker.step(sigma)
    scale = recipe.schedule.scale(cfg_scale, step, tracker.steps) if recipe.schedule else cfg_scale
    guided = torch.ones(batch, dtype=torch.bool)
    if recipe.skip is not None:
        if recipe.skip.mode == "adaptive":
            if run.switched_at is None or run.switched_at.shape[0] != batch:
                run.switched_at = torch.full((batch,), tracker.steps, dtype=torch.long)
            guided = run.switched_at > step
        elif not recipe.skip.guides_step(step, tracker.steps, tracker.schedule[step]):
            guided = torch.zeros(batch, dtype=torch.bool)
    negatives = tuple(i for i, negative in enumerate(recipe.negatives) if negative.scale != 0)
    with_uncond = has_uncond and bool(guided.any()) and (bool(negatives) or needs_uncond(scale, keep_uncond))
    if not with_uncond:
        guided = torch.zeros(batch, dtype=torch.bool)
    perturbed = tuple(i for i, perturbation in enumerate(recipe.perturbations) if perturbation.active(sigma, timestep))
    perturbed_scales = tuple(recipe.perturbations[i].scale_at(timestep) for i in perturbed)
    mimic_scale = recipe.threshold.mimic_schedule.scale(recipe.threshold.mimic_scale, step, tracker.steps) \
        if recipe.threshold is not None else 0.0
    return Plan(step, scale, guided, with_uncond, negatives if with_uncond else (), perturbed, perturbed_scales,
                mimic_scale)


def observe(recipe: Recipe, run: RunState, step_plan: Plan, x: torch.Tensor, denoised_cond: torch.Tensor,
            denoised_uncond: torch.Tensor, alpha: float = 1.0) -> None:
    """Adaptive skip: samples whose noise predictions agree (cos ≥ γ̄) are conditional-only from the next step on.

    `alpha` is the signal scale of the model's noising path `x = α·x0 + σ·n` at this sigma (guiders/skip.py).
    """
    if recipe.skip is None or recipe.skip.mode != "adaptive" or not step_plan.with_uncond:
        return
    cosine = noise_cosine(x, denoised_cond, denoised_uncond, alpha)
    # At α = 0 (σ = 1 on flow: pure noise) the noise is x itself whatever the prompt: the cosine says nothing there.
    informative = torch.as_tensor(alpha).reshape(-1).cpu() > 0
    agree = (cosine >= recipe.skip.threshold).cpu() & informative & step_plan.guided
    run.switched_at = torch.where(agree, torch.minimum(run.switched_at, torch.tensor(step_plan.step + 1)),
                                  run.switched_at)


def where_guided(step_plan: Plan, guided: torch.Tensor, unguided: torch.Tensor) -> torch.Tensor:
    """Per sample: `guided` where CFG applies at this evaluation, `unguided` elsewhere."""
    if bool(step_plan.guided.all()):
        return guided
    mask = step_plan.guided.to(guided.device).view(-1, *([1] * (guided.ndim - 1)))
    return torch.where(mask, guided, unguided)


def combine(recipe: Recipe, step_plan: Plan, denoised_cond: torch.Tensor, denoised_uncond: torch.Tensor,
            denoised_negatives: Sequence[torch.Tensor] = (), denoised_perturbed: Sequence[torch.Tensor] = (),
            cfg_rule: CFGRule = cfg, trace: Trace | None = None) -> torch.Tensor:
    """The guided x0 of one evaluation, in the documented order. Unguided samples' uncond is the cond already.

    `denoised_negatives` and `denoised_perturbed` hold one prediction per index of the plan's `negatives` and
    `perturbed`, in that order. With a `trace`, what the evaluation did is added to it (guiders/trace.py); without
    one nothing is measured.
    """
    guided = denoised_cond
    if step_plan.with_uncond:
        guided = cfg_rule(denoised_cond, denoised_uncond, step_plan.scale)
        for index, denoised_negative in zip(step_plan.negatives, denoised_negatives, strict=True):
            negative = recipe.negatives[index]
            guided = guided - negative.scale * negative_direction(denoised_negative, denoised_uncond, denoised_cond,
                                                                  negative.mode)
        guided = where_guided(step_plan, guided, denoised_cond)
    pag = None
    for index, scale, perturbed in zip(step_plan.perturbed, step_plan.perturbed_scales, denoised_perturbed,
                                       strict=True):
        before = guided
        guided = rescaled(guided + perturbation_term(denoised_cond, perturbed, scale), denoised_cond,
                          recipe.perturbations[index].rescale)
        if trace is not None:
            pag = guided - before if pag is None else pag + (guided - before)
    before_threshold = guided
    if recipe.threshold is not None and step_plan.with_uncond:
        if recipe.threshold.mode == "imagen":
            thresholded = imagen_threshold(guided, recipe.threshold.percentile)
        else:
            mimic = cfg(denoised_cond, denoised_uncond, step_plan.mimic_scale)
            thresholded = mimic_threshold(guided, mimic, recipe.threshold)
        guided = where_guided(step_plan, thresholded, guided)
    if trace is not None:
        _record(trace, recipe, step_plan, guided, denoised_cond, denoised_uncond, before_threshold, pag)
    return guided


def _record(trace: Trace, recipe: Recipe, step_plan: Plan, guided: torch.Tensor, denoised_cond: torch.Tensor,
            denoised_uncond: torch.Tensor, before_threshold: torch.Tensor, pag: torch.Tensor | None) -> None:
    branches = 1 + step_plan.with_uncond + len(step_plan.negatives) + len(step_plan.perturbed)
    thresholded = recipe.threshold is not None and step_plan.with_uncond
    record(trace, step_plan.step, step_plan.scale, step_plan.guided, branches, guided, denoised_cond,
           denoised_cond - denoised_uncond if step_plan.with_uncond else None,
           norms(guided) / norms(before_threshold).clamp(min=1e-30) if thresholded else None,
           norms(pag) if pag is not None else None)
