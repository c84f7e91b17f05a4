"""What guidance did in one run, per step: the record behind SteerTrace.

The measures follow the seed lesson's analysis of guidance (and the quantities the methods act on):
  - the scale applied (Ho & Salimans' s, after any schedule), and which samples CFG-skip left unguided;
  - the batch rows the step's model calls computed (B × branches: cond, uncond, extra negatives, perturbed cond);
  - ‖D_c − D_u‖, the size of the guidance direction (Ho & Salimans, arXiv 2207.12598), per sample;
  - cos(D, D_c): how far the guided x0 D turned away from the cond's x0, per sample;
  - the thresholding factor ‖D after‖ / ‖D before‖ of dynamic thresholding (1 = untouched), per sample;
  - the PAG term's size ‖s_p·(D_c − D̂_c)‖ (Ahn et al., arXiv 2403.17377), per sample.
All are measured on x0 predictions in the model's latent space. A measure that does not apply to a sample at an
evaluation (no uncond computed, no thresholding, no PAG) is NaN there. Nothing is computed without a Trace.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Evaluation:
    """One model evaluation of the run; per-sample measures are tuples over the batch."""

    step: int
    scale: float
    guided: tuple[bool, ...]
    rows: int
    difference: tuple[float, ...]
    cosine: tuple[float, ...]
    threshold_factor: tuple[float, ...]
    pag: tuple[float, ...]


MEASURES = ("difference", "cosine", "threshold_factor", "pag")


@dataclass
class Trace:
    """The evaluations of one sampling run over `steps` steps, and (once the run is over) the latent it returned."""

    steps: int
    evaluations: list[Evaluation] = field(default_factory=list)
    output: torch.Tensor | None = None

    def per_step(self, sample: int) -> dict[str, list[float]]:
        """For one sample, per step: the scale, guided (1/0), rows (summed over the step's evaluations) and the mean
        of each measure over the step's evaluations where it applied (NaN if nowhere); NaN for steps not evaluated."""
        table = {name: [math.nan] * self.steps for name in ("scale", "guided", "rows", *MEASURES)}
        for step in range(self.steps):
            here = [e for e in self.evaluations if e.step == step]
            if not here:
                continue
            table["scale"][step] = here[0].scale
            table["guided"][step] = float(any(e.guided[sample] for e in here))
            table["rows"][step] = float(sum(e.rows for e in here))
            for name in MEASURES:
                values = [getattr(e, name)[sample] for e in here if not math.isnan(getattr(e, name)[sample])]
                table[name][step] = sum(values) / len(values) if values else math.nan
        return table


def _per_sample(values: torch.Tensor) -> tuple[float, ...]:
    return tuple(float(v) for v in values.detach().float().cpu())


def norms(x: torch.Tensor) -> torch.Tensor:
    """‖x‖ per sample, reduced in float32."""
    return x.flatten(1).float().norm(dim=1)


def record(trace: Trace, step: int, scale: float, guided: torch.Tensor, branches: int, denoised: torch.Tensor,
           denoised_cond: torch.Tensor, difference: torch.Tensor | None, threshold_factor: torch.Tensor | None,
           pag: torch.Tensor | None) -> None:
    """Add one evaluation: `difference` is D_c − D_u (None without uncond), `threshold_factor` and `pag` per sample
    (None where the method did not run). Unguided samples get NaN for the guidance difference and thresholding."""
    batch = denoised.shape[0]
    nan = torch.full((batch,), math.nan)
    guided = guided.cpu()
    cosine = torch.nn.functional.cosine_similarity(denoised.flatten(1).float(), denoised_cond.flatten(1).float(), dim=1)
    trace.evaluations.append(Evaluation(
        step=step, scale=scale, guided=tuple(bool(g) for g in guided), rows=batch * branches,
        difference=_per_sample(torch.where(guided, norms(difference).cpu(), nan) if difference is not None else nan),
        cosine=_per_sample(cosine),
        threshold_factor=_per_sample(torch.where(guided, threshold_factor.cpu(), nan)
                                     if threshold_factor is not None else nan),
        pag=_per_sample(pag if pag is not None else nan)))


class Recorder:
    """The traces of the last runs of one traced model, found again by the latent each run returned.

    Copies of the model (ComfyUI deep-copies model_options on every clone) share this one recorder, so the sampler's
    run is seen whichever patch nodes come after SteerTrace. Matching by the returned latent keeps the right trace
    for each sampler when several share the model, and when a cached sampler output is plotted again.
    """

    def __init__(self, keep: int = 16) -> None:
        self.runs: deque[Trace] = deque(maxlen=keep)
        self.open: list[Trace] = []

    def __deepcopy__(self, memo: dict) -> Recorder:
        return self

    def begin(self) -> None:
        """A sampler node's run begins: runs left open by an interrupted one are dropped."""
        self.open = []

    def start(self, steps: int) -> Trace:
        trace = Trace(steps)
        self.open.append(trace)
        return trace

    def finish(self, output: torch.Tensor) -> None:
        """The runs started since the last call returned `output` (the latent the sampler node will output)."""
        for trace in self.open:
            trace.output = output.detach().to("cpu", copy=True)
            self.runs.append(trace)
        self.open = []

    def find(self, latent: torch.Tensor) -> Trace | None:
        """The newest run that returned exactly `latent`."""
        latent = latent.detach().cpu()
        for trace in reversed(self.runs):
            if trace.output.shape == latent.shape and torch.equal(trace.output.to(latent.dtype), latent):
                return trace
        return None
