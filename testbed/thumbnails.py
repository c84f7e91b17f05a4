"""Template-card thumbnails: what an example does to guidance, step by step, computed from its own settings with
Steer's math (guiders/). No real model weights exist on the machines that build the pack, so the cards show the
guidance each step gets — the scale, skipped negatives, perturbed steps (PAG, SEG, skip-layer), model rows — next to
plain CFG, not a render. A training example's card shows which training samples Steer Condition Dropout gives the empty
prompt. The sigmas are ComfyUI's (tests/comfy/test_preview.py compares them), written out here so that cards are
drawn without ComfyUI.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from guiders.dropout import dropped
from guiders.perturbation import Perturbation
from guiders.schedule import ScaleSchedule, parse_custom
from guiders.skip import CFGSkip
from testbed.examples import Example, Graph

SIZE = (512, 512)
BACKGROUND, INK, MUTED = (24, 30, 38), (235, 240, 245), (140, 150, 160)
STEER, PLAIN, SKIPPED, PAG = (96, 170, 230), (120, 120, 120), (70, 80, 92), (235, 160, 70)
DROPOUT_CELLS = 100  # training samples on a training card, 10 × 10
FLOW_SHIFT = 3.0  # SD3's ModelSamplingDiscreteFlow shift
# The perturbation nodes, their kind (guiders/perturbation.py) and the name on the card.
PERTURBATIONS = {"SteerPAG": ("pag", "PAG"), "SteerSEG": ("seg", "SEG"), "SteerSkipLayer": ("skip", "skip-layer")}


def _log_sigmas() -> list[float]:
    """ComfyUI's ModelSamplingDiscrete defaults (scaled-linear betas 0.00085–0.012): log σ for timesteps 0–999."""
    betas = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / 999) ** 2 for i in range(1000)]
    log_sigmas, product = [], 1.0
    for beta in betas:
        product *= 1 - beta
        log_sigmas.append(math.log(math.sqrt((1 - product) / product)))
    return log_sigmas


LOG_SIGMAS = _log_sigmas()


def discrete_sigma(t: float) -> float:
    """σ at timestep t (0–999) of SD1.5 / SDXL, log-interpolated as ModelSamplingDiscrete.sigma."""
    low = min(int(t), 998)
    return math.exp(LOG_SIGMAS[low] + (LOG_SIGMAS[low + 1] - LOG_SIGMAS[low]) * (t - low))


def discrete_timestep(sigma: float) -> float:
    """The timestep the model gets at σ: the nearest of the 1000 in log σ, as ModelSamplingDiscrete.timestep."""
    return float(min(range(1000), key=lambda t: abs(math.log(sigma) - LOG_SIGMAS[t])))


def flow_sigma(t: float) -> float:
    """σ at time t (0–1) of SD3's flow sampling: time_snr_shift(3, t)."""
    return FLOW_SHIFT * t / (1 + (FLOW_SHIFT - 1) * t)


def schedule(steps: int, flow: bool = False) -> list[tuple[float, float]]:
    """(σ, model timestep 0–1000) per step: SD1.5 / SDXL's `normal` scheduler, or SD3's `sgm_uniform` (flow)."""
    if flow:
        t_min = flow_sigma(1 / 1000)  # the flow model's smallest σ; its timestep is σ·1000
        times = [1 - (1 - t_min) * i / steps for i in range(steps)]
        return [(flow_sigma(t), flow_sigma(t) * 1000) for t in times]
    times = [999 * (1 - i / (steps - 1)) if steps > 1 else 999.0 for i in range(steps)]
    return [(discrete_sigma(t), discrete_timestep(discrete_sigma(t))) for t in times]


def discrete_sigmas(steps: int) -> list[float]:
    """SD1.5 / SDXL sigmas of the `normal` scheduler (ComfyUI's ModelSamplingDiscrete defaults), highest first."""
    return [sigma for sigma, _ in schedule(steps)]


def percent_to_sigma(percent: float, flow: bool = False) -> float:
    """ComfyUI's model_sampling.percent_to_sigma for SD1.5 / SDXL, or SD3's flow sampling."""
    if percent <= 0:
        return 1.0 if flow else 999999999.9
    if percent >= 1:
        return 0.0
    return flow_sigma(1 - percent) if flow else discrete_sigma((1 - percent) * 999)


def perturbation(node_type: str, inputs: dict[str, Any], flow: bool = False) -> Perturbation:
    """A perturbation node's branch as the node builds it (nodes/perturbing.py window): the percent window converted
    by percent_to_sigma (start 0: unbounded), narrowed by sigma_start / sigma_end."""
    inputs = {"sigma_start": -1.0, "sigma_end": -1.0, "adaptive_scale": 0.0} | inputs  # optional on the node
    sigma_high = percent_to_sigma(inputs["start_percent"], flow) if inputs["start_percent"] > 0 else math.inf
    sigma_low = percent_to_sigma(inputs["end_percent"], flow)
    if inputs["sigma_start"] >= 0:
        sigma_high = min(sigma_high, inputs["sigma_start"])
    if inputs["sigma_end"] >= 0:
        sigma_low = max(sigma_low, inputs["sigma_end"])
    return Perturbation(PERTURBATIONS[node_type][0], inputs["scale"], sigma_high=sigma_high, sigma_low=sigma_low,
                        adaptive_scale=inputs["adaptive_scale"])


def _inputs(graph: Graph, class_type: str) -> list[dict[str, Any]]:
    return [node["inputs"] for node in graph.values() if node["class_type"] == class_type]


def per_step(graph: Graph, plain: dict[str, Any], flow: bool = False) -> dict[str, list[Any]]:
    """Per step of the example's Steer side: the scale, whether the negative is computed, which perturbations are
    (their card names), and the model rows per image; plus the plain-CFG scale. `flow`: an SD3 family."""
    (sampler,) = [n for n in graph.values() if n["class_type"] in ("KSampler", "BasicScheduler", "SteerSweep")]
    steps = sampler["inputs"]["steps"]
    # A sweep is drawn at its highest scale, where its patches matter most.
    cfg = next(max(parse_custom(n["inputs"]["scales"])) if n["class_type"] == "SteerSweep" else n["inputs"]["cfg"]
               for n in graph.values() if n["class_type"] in ("KSampler", "SteerGuider", "SteerSweep"))
    steps_sigmas = schedule(steps, flow)
    schedules = [ScaleSchedule(s["curve"], s["cfg_min"], s["switch_at"], s["exponent"],
                               parse_custom(s["custom"]) if s["curve"] == "custom" else ())
                 for s in _inputs(graph, "SteerScaleSchedule")]
    skips = [CFGSkip(s["mode"], s["start_percent"], s["end_percent"], s["sigma_high"], s["sigma_low"], s["threshold"])
             for s in _inputs(graph, "SteerCFGSkip")]
    perturbations = [(PERTURBATIONS[n["class_type"]][1], perturbation(n["class_type"], n["inputs"], flow))
                     for n in graph.values() if n["class_type"] in PERTURBATIONS]
    negatives = len(_inputs(graph, "SteerNegative"))
    out: dict[str, list[Any]] = {"scale": [], "guided": [], "perturbed": [], "rows": []}
    for step, (sigma, timestep) in enumerate(steps_sigmas):
        scale = schedules[-1].scale(cfg, step, steps) if schedules else cfg
        guided = scale != 1.0 and all(skip.guides_step(step, steps, sigma) for skip in skips)
        perturbed = [name for name, branch in perturbations if branch.active(sigma, timestep)]
        out["scale"].append(scale)
        out["guided"].append(guided)
        out["perturbed"].append(perturbed)
        out["rows"].append(1 + (1 + negatives if guided else 0) + len(perturbed))
    out["plain"] = [plain.get("cfg", cfg)] * steps
    return out


def dropped_samples(graph: Graph, count: int = DROPOUT_CELLS) -> list[bool]:
    """The first `count` training samples (step by step, batch by batch) of the example's TrainLoraNode: whether
    its SteerConditionDropout gives each the null conditioning."""
    (dropout,) = _inputs(graph, "SteerConditionDropout")
    (train,) = _inputs(graph, "TrainLoraNode")
    batch = train["batch_size"]
    steps = -(-count // batch)
    return [bool(d) for step in range(steps)
            for d in dropped(dropout["seed"], step, batch, dropout["rate"])][:count]


def write_thumbnail(example: Example, path: Path) -> None:
    """A 512² JPEG card: title, the per-step chart (Steer bars, plain-CFG line) and the rows per step; for a training
    example the grid of dropped samples."""
    graph = example.build(example.family)
    image = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(image)
    big, small = ImageFont.load_default(size=26), ImageFont.load_default(size=16)
    number, _, name = example.title.partition(" - ")
    draw.text((24, 20), name.rsplit(" (", 1)[0], font=big, fill=INK)
    if example.training:
        _dropout_card(draw, graph, f"{number} · {example.family.name} · LoRA training", small)
        image.save(path, "JPEG", quality=90)
        return
    data = per_step(graph, example.plain, example.family.flow)
    draw.text((24, 56), f"{number} · {example.family.name} · {len(data['scale'])} steps", font=small, fill=MUTED)

    left, top, right, bottom = 56, 110, 488, 380
    top_scale = max(max(data["scale"]), max(data["plain"]), 1.0) * 1.15
    steps = len(data["scale"])
    width = (right - left) / steps

    def y_of(value: float) -> float:
        return bottom - (bottom - top) * value / top_scale

    draw.line([(left, top), (left, bottom), (right, bottom)], fill=MUTED, width=2)
    for tick in range(0, math.floor(top_scale) + 1, max(1, math.ceil(top_scale / 5))):  # ticks inside the chart
        draw.text((left - 30, y_of(tick) - 9), f"{tick:>2}", font=small, fill=MUTED)
    for step, (scale, guided, perturbed) in enumerate(zip(data["scale"], data["guided"], data["perturbed"],
                                                          strict=True)):
        x0, x1 = left + step * width + 1, left + (step + 1) * width - 1
        draw.rectangle([x0, y_of(scale if guided else 1.0), x1, bottom - 1], fill=STEER if guided else SKIPPED)
        if perturbed:
            draw.rectangle([x0, bottom + 4, x1, bottom + 12], fill=PAG)
    draw.line([(left, y_of(data["plain"][0])), (right, y_of(data["plain"][-1]))], fill=PLAIN, width=3)

    legend = [(STEER, "Steer scale per step"), (PLAIN, f"plain CFG {data['plain'][0]:g}")]
    if not all(data["guided"]):
        legend.append((SKIPPED, "negative skipped"))
    names = list(dict.fromkeys(name for perturbed in data["perturbed"] for name in perturbed))
    if names:
        legend.append((PAG, " + ".join(names)))
    x, y = 24, 400
    for color, label in legend:
        if x + 20 + draw.textlength(label, font=small) > SIZE[0] - 16:
            x, y = 24, y + 24
        draw.rectangle([x, y + 2, x + 14, y + 16], fill=color)
        draw.text((x + 20, y), label, font=small, fill=INK)
        x += 34 + draw.textlength(label, font=small)
    rows = sum(data["rows"]) / steps
    draw.text((24, 454), f"model rows per image and step: plain CFG 2, Steer {rows:.2f}", font=small, fill=INK)
    draw.text((24, 480), "diagram of the example's settings, not a render", font=small, fill=MUTED)
    image.save(path, "JPEG", quality=90)


def _dropout_card(draw: ImageDraw.ImageDraw, graph: Graph, subtitle: str, small: ImageFont.ImageFont) -> None:
    """The first DROPOUT_CELLS training samples as a 10 × 10 grid: caption kept (blue) or empty prompt (orange)."""
    samples = dropped_samples(graph)
    (dropout,) = _inputs(graph, "SteerConditionDropout")
    draw.text((24, 56), subtitle, font=small, fill=MUTED)
    side, left, top = 26, 56 + 5, 96
    for index, drop in enumerate(samples):
        x, y = left + (index % 10) * (side + 14), top + (index // 10) * (side + 4)
        draw.rectangle([x, y, x + side, y + side], fill=PAG if drop else STEER)
    x, y = 24, 400
    for color, label in ((STEER, "caption"), (PAG, "empty prompt (trains the unconditional)")):
        draw.rectangle([x, y + 2, x + 14, y + 16], fill=color)
        draw.text((x + 20, y), label, font=small, fill=INK)
        x += 34 + draw.textlength(label, font=small)
    draw.text((24, 454), f"{sum(samples)} of the first {len(samples)} samples dropped (rate {dropout['rate']:g}, "
              f"seed {dropout['seed']})", font=small, fill=INK)
    draw.text((24, 480), "diagram of the example's settings, not a render", font=small, fill=MUTED)
