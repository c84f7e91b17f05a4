"""Seconds per sampling step of Steer vs core ComfyUI, and what the model rows alone predict.

    .venv/bin/python -m bench.guidance [--size 128] [--steps 8] [--repeats 7] [--checkpoint PATH] [--output-dir DIR]

Every case runs `repeats` times; each repeat runs all cases once, in an order rotated by one from the previous
repeat, so machine load hits all alike. Each case is compared with a baseline within the same repeat (paired
ratio), and the median and range of those ratios are reported. Model calls and their batch rows are recorded at the
diffusion model's forward (below every ComfyUI hook); the bare network's seconds per call at each row count are
timed in the same loop, and "rows predict" is the ratio of Σ bare-forward time over the two cases' calls: the share
of the measured ratio that the model's work explains. `excess` = measured / predicted is what remains: the sampling
code's own cost (Steer's or core's) relative to the baseline's.

Cases: core CFGGuider vs SteerGuider; core PerturbedAttentionGuidance vs SteerPAG; full CFG vs SteerCFGSkip (percent
0.4–1, sigma (0.28, 5.42], adaptive 0.99); each Steer patch on vs off; core CFG++ samplers vs SteerCFGPPSampler;
SteerNegative vs core DualCFGGuider and PerpNegGuider where they compute the same guided prediction; Steer's CFG++
DPM++ 2M SDE (KSampler name, λ 1) vs core's plain dpmpp_2m_sde (cfg 7), the same two rows per call; and on the
test bed's tiny Flux and Wan, core SkipLayerGuidanceDiT (a second call per step) vs SteerSkipLayer (one call).
Default model: the test bed's tiny SD1.5 checkpoint; `--checkpoint` takes any SD1.5/SDXL one.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import platform
import pstats
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from testbed.comfy import MODELS, import_comfy

RESULTS = Path(__file__).resolve().parent / "results"
CFG = 7.0
CFG_PP_LAMBDA = 0.6


@dataclass(frozen=True)
class Case:
    """A guider and a sampler to time; `baseline` names the case it is compared with (None: it is a baseline)."""

    name: str
    build: Callable[[], tuple[object, object]]  # () → (guider, sampler)
    baseline: str | None = None


def _cases(steer: dict[str, type], model, prompts: dict[str, list]) -> list[Case]:
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance
    from comfy_extras.nodes_perpneg import Guider_PerpNeg

    positive, negative, middle, empty = (prompts[k] for k in ("positive", "negative", "middle", "empty"))
    sampler = comfy.samplers.sampler_object

    def core(m, cfg: float = CFG, neg=negative):
        guider = comfy.samplers.CFGGuider(m)
        guider.set_conds(positive, neg)
        guider.set_cfg(cfg)
        return guider

    def steer_guider(m, cfg: float = CFG, neg=negative):
        return steer["SteerGuider"].execute(m, positive, neg, cfg).result[0]

    def patched(node: str, *inputs, **named):
        return steer[node].execute(model, *inputs, **named).result[0]

    def skip(mode: str, start: float = 0.4):
        return patched("SteerCFGSkip", mode, start, 1.0, 5.42, 0.28, 0.99)

    def dual_cfg():
        guider = Guider_DualCFG(model)
        guider.set_conds(positive, middle, negative)
        guider.set_cfg(CFG, 2.0)
        return guider

    def perp_neg():
        guider = Guider_PerpNeg(model)
        guider.set_conds(positive, negative, empty)
        guider.set_cfg(CFG, 1.0)
        return guider

    steer_pp = steer["SteerCFGPPSampler"]
    core_cfg, steer_cfg = "core CFGGuider (cfg 7)", "SteerGuider (cfg 7)"
    return [
        Case(core_cfg, lambda: (core(model), sampler("euler"))),
        Case(steer_cfg, lambda: (steer_guider(model), sampler("euler")), core_cfg),
        Case("core PAG (cfg 5, PAG 3)", lambda: (core(PerturbedAttentionGuidance.execute(model, 3.0).result[0], 5.0),
                                                 sampler("euler"))),
        Case("SteerPAG (cfg 5, PAG 3, middle.0)",
             lambda: (steer_guider(patched("SteerPAG", scale=3.0, blocks="middle.0", start_percent=0.0,
                                                                  end_percent=1.0), 5.0), sampler("euler")),
             "core PAG (cfg 5, PAG 3)"),
        Case("SteerCFGSkip percent 0.4–1", lambda: (steer_guider(skip("percent")), sampler("euler")), core_cfg),
        Case("SteerCFGSkip sigma (0.28, 5.42]", lambda: (steer_guider(skip("sigma")), sampler("euler")), core_cfg),
        Case("SteerCFGSkip adaptive 0.99", lambda: (steer_guider(skip("adaptive")), sampler("euler")), core_cfg),
        Case("+ SteerScaleSchedule (linear_down 7→3)", lambda: (steer_guider(patched(
            "SteerScaleSchedule", "linear_down", 3.0, 0.5, 2.0, "")), sampler("euler")), steer_cfg),
        Case("+ SteerDynamicThreshold (latent, mimic 4)", lambda: (steer_guider(patched(
            "SteerDynamicThreshold", "latent", 4.0, 1.0, "MEAN", "AD", 1.0)), sampler("euler")), steer_cfg),
        Case("+ SteerCFGSkip percent 0–1 (guides every step)", lambda: (steer_guider(skip("percent", 0.0)),
                                                                          sampler("euler")), steer_cfg),
        Case("+ SteerNegative (subtract 1)", lambda: (steer_guider(patched("SteerNegative", middle, 1.0, "subtract")),
                                                      sampler("euler")), steer_cfg),
        Case("+ SteerPAG (3, middle.0)", lambda: (steer_guider(patched("SteerPAG", scale=3.0, blocks="middle.0",
                                                                       start_percent=0.0, end_percent=1.0)),
                                                  sampler("euler")), steer_cfg),
        Case("core euler_cfg_pp (λ 0.6)", lambda: (core(model, CFG_PP_LAMBDA), sampler("euler_cfg_pp"))),
        Case("SteerCFGPPSampler euler (λ 0.6)", lambda: (steer_guider(model, CFG_PP_LAMBDA),
                                                        steer_pp.execute("euler", 1.0, 1.0).result[0]),
             "core euler_cfg_pp (λ 0.6)"),
        Case("core dpmpp_2m_cfg_pp (λ 0.6)", lambda: (core(model, CFG_PP_LAMBDA), sampler("dpmpp_2m_cfg_pp"))),
        Case("SteerCFGPPSampler dpmpp_2m (λ 0.6)", lambda: (steer_guider(model, CFG_PP_LAMBDA),
                                                           steer_pp.execute("dpmpp_2m", 1.0, 1.0).result[0]),
             "core dpmpp_2m_cfg_pp (λ 0.6)"),
        Case("core dpmpp_2m_sde (cfg 7)", lambda: (core(model), sampler("dpmpp_2m_sde"))),
        Case("steer_dpmpp_2m_sde_cfg_pp (λ 1)", lambda: (core(model, 1.0), sampler("steer_dpmpp_2m_sde_cfg_pp")),
             "core dpmpp_2m_sde (cfg 7)"),
        Case("core DualCFGGuider (7, 2)", lambda: (dual_cfg(), sampler("euler"))),
        Case("SteerNegative = DualCFG (cfg 7, middle as negative, subtract 1)", lambda: (steer_guider(patched(
            "SteerNegative", negative, 1.0, "subtract"), neg=middle), sampler("euler")), "core DualCFGGuider (7, 2)"),
        Case("core PerpNegGuider (7, neg 1)", lambda: (perp_neg(), sampler("euler"))),
        Case("SteerNegative = PerpNeg (cfg 7, empty, perpendicular 7)", lambda: (steer_guider(patched(
            "SteerNegative", negative, CFG, "perpendicular"), neg=empty), sampler("euler")),
             "core PerpNegGuider (7, neg 1)"),
    ]


def _dit_cases(steer: dict[str, type], family, double: str, single: str) -> list[Case]:
    """Skip-layer guidance on a DiT: core SkipLayerGuidanceDiT (its perturbed cond in a second call) vs SteerSkipLayer
    (the same blocks, scale, window, in the step's one call), both at cfg 4 over the whole run; and the plain CFG."""
    import comfy.samplers
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    from testbed.sampling import core_guider

    def core(m):
        return core_guider(m, family, 4.0)

    blocks = ", ".join([f"double.{n}" for n in double.split(",") if n]
                       + [f"single.{n}" for n in single.split(",") if n])
    skip = steer["SteerSkipLayer"]
    name = family.name
    return [
        Case(f"{name}: core CFGGuider (cfg 4)", lambda: (core(family.model), comfy.samplers.sampler_object("euler"))),
        Case(f"{name}: core SkipLayerGuidanceDiT ({blocks}, 3)", lambda: (core(SkipLayerGuidanceDiT.execute(
            family.model, 3.0, 0.0, 1.0, double, single, 0.0).result[0]), comfy.samplers.sampler_object("euler")),
             f"{name}: core CFGGuider (cfg 4)"),
        Case(f"{name}: SteerSkipLayer ({blocks}, 3)", lambda: (core(skip.execute(
            family.model, scale=3.0, blocks=blocks, start_percent=0.0, end_percent=1.0).result[0]),
            comfy.samplers.sampler_object("euler")), f"{name}: core SkipLayerGuidanceDiT ({blocks}, 3)"),
    ]


def _time_run(guider, sampler, latent: torch.Tensor, steps: int, seed: int) -> tuple[float, list[int]]:
    import comfy.sample

    from testbed.sampling import model_calls, sigmas

    noise = comfy.sample.prepare_noise(latent, seed)
    schedule = sigmas(guider.model_patcher, steps)
    with model_calls(guider.model_patcher) as rows:
        start = time.perf_counter()
        guider.sample(noise, latent, sampler, schedule, disable_pbar=True, seed=seed)
        elapsed = time.perf_counter() - start
    return elapsed / steps, rows


def _bare_forward(model, rows: int, latent: torch.Tensor, context: torch.Tensor) -> float:
    """Seconds of one forward of the diffusion model alone at `rows` batch rows (no ComfyUI sampling code)."""
    net = model.model.diffusion_model
    x = latent.repeat(rows, *[1] * (latent.ndim - 1)) + torch.randn(rows, *latent.shape[1:],
                                                                    generator=torch.Generator().manual_seed(0))
    t = torch.full((rows,), 0.5 if latent.shape[1] == 16 else 500.0)  # flow models take σ-scale timesteps
    c = context.repeat(rows, 1, 1)
    with torch.no_grad():
        start = time.perf_counter()
        net(x, t, context=c, transformer_options={})
        return time.perf_counter() - start


def steer_code_seconds(run: Callable[[], object], package: Path) -> tuple[float, float]:
    """(seconds spent in Steer's own code, total seconds) of one profiled call of `run`: the self time of every
    function in `package` plus that of the builtins (torch ops) those functions call directly. cProfile inflates
    Python-level work, so the share is an upper bound."""
    profile = cProfile.Profile()
    profile.runcall(run)
    stats = pstats.Stats(profile).stats
    root = str(package)

    def ours(function: tuple) -> bool:
        return function[0].startswith(root)

    own = 0.0
    for function, (_cc, _nc, self_time, _ct, callers) in stats.items():
        if ours(function):
            own += self_time
        elif function[0] == "~":  # a builtin: count the calls made from our code
            own += sum(edge[2] for caller, edge in callers.items() if ours(caller))
    total = max(entry[3] for entry in stats.values())
    return own, total


def device_name() -> str:
    """The GPU's name where ComfyUI runs on one, else the CPU's model name."""
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def summarise(cases: list[Case], seconds: dict[str, list[float]], rows: dict[str, list[int]],
              bare: dict[int, list[float]], steps: int) -> list[dict]:
    """Per case: s/step (median, range), calls and rows per step, paired ratio to its baseline (median, range),
    the ratio the bare forwards predict, and excess = measured / predicted."""
    bare_median = {r: statistics.median(v) for r, v in bare.items()}
    predicted = {name: sum(bare_median[r] for r in calls) / steps for name, calls in rows.items()}
    out = []
    for case in cases:
        median, low, high = _spread(seconds[case.name])
        record = {"case": case.name, "baseline": case.baseline, "s_per_step": median, "s_per_step_min": low,
                  "s_per_step_max": high, "calls_per_step": len(rows[case.name]) / steps,
                  "rows_per_step": sum(rows[case.name]) / steps, "rows_per_call": sorted(set(rows[case.name])),
                  "predicted_s_per_step": predicted[case.name]}
        if case.baseline:
            ratios = [a / b for a, b in zip(seconds[case.name], seconds[case.baseline], strict=True)]
            ratio, ratio_low, ratio_high = _spread(ratios)
            expected = predicted[case.name] / predicted[case.baseline]
            record |= {"ratio": ratio, "ratio_min": ratio_low, "ratio_max": ratio_high,
                       "rows_ratio": record["rows_per_step"] / (sum(rows[case.baseline]) / steps),
                       "predicted_ratio": expected, "excess": ratio / expected,
                       "excess_min": ratio_low / expected, "excess_max": ratio_high / expected}
        out.append(record)
    return out


def markdown(meta: dict, sections: list[dict]) -> str:
    lines = [
        "# Speed: Steer vs core ComfyUI", "",
        f"Generated by `{meta['command']}`. Device: {meta['device']} ({meta['threads']} threads), {meta['steps']} "
        f"steps, batch 1, {meta['repeats']} interleaved repeats (order rotated each repeat); machine load average "
        f"{meta['load']} at the start (other processes share this CPU: read the ranges).", "",
        "Ratio = this case's seconds ÷ its baseline's in the same repeat: median [min–max] over the repeats. Rows "
        "predict = the ratio of the bare network's time for the two cases' model calls (timed at each batch size in "
        "the same loop): what the model's work alone explains. Excess = ratio ÷ rows predict: the sampling code's "
        "own cost (1.00 = none beyond the model's). Steer code = time in Steer's own functions and the torch ops "
        "they call directly, from one cProfile'd run (an upper bound: profiling inflates Python work).",
    ]
    for section in sections:
        lines += _table(section)
    return "\n".join(lines) + "\n"


def _table(section: dict) -> list[str]:
    lines = [
        "", f"## {section['title']}", "",
        "| case | vs | s/step median [min–max] | calls/step | rows/step | ratio [min–max] | rows predict | excess "
        "[min–max] | Steer code ms/step (share) |", "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in section["records"]:
        timing = f"{r['s_per_step']:.4f} [{r['s_per_step_min']:.4f}–{r['s_per_step_max']:.4f}]"
        if r["baseline"]:
            versus = (f"{r['ratio']:.3f} [{r['ratio_min']:.3f}–{r['ratio_max']:.3f}] | {r['predicted_ratio']:.3f} | "
                      f"**{r['excess']:.3f}** [{r['excess_min']:.3f}–{r['excess_max']:.3f}]")
        else:
            versus = "| |"
        own = f"{r['steer_code_ms_per_step']:.2f} ({100 * r['steer_code_share']:.1f} %)"
        lines.append(f"| {r['case']} | {r['baseline'] or '(baseline)'} | {timing} | {r['calls_per_step']:g} | "
                     f"{r['rows_per_step']:g} | {versus} | {own} |")
    lines += ["", "Bare network, seconds per forward by batch rows (median [min–max]): "
              + "; ".join(f"{rows}: {statistics.median(v):.4f} [{min(v):.4f}–{max(v):.4f}]"
                          for rows, v in sorted(section["bare"].items()))]
    return lines


def _measure(section: dict, steps: int, repeats: int, package: Path):
    """Interleaved, repeated timing of a section's cases, the bare network in the same loop, one profiled run each."""
    cases, model, latent, context = section["cases"], section["model"], section["latent"], section["context"]
    built = {case.name: case.build() for case in cases}
    rows: dict[str, list[int]] = {}
    for case in cases:  # warm-up: model load, first-call allocations; records each case's calls
        rows[case.name] = _time_run(*built[case.name], latent, steps, 0)[1]
    batch_sizes = sorted({r for calls in rows.values() for r in calls})
    seconds: dict[str, list[float]] = {case.name: [] for case in cases}
    bare: dict[int, list[float]] = {r: [] for r in batch_sizes}
    for repeat in range(repeats):
        shift = repeat % len(cases)
        for case in cases[shift:] + cases[:shift]:
            per_step, calls = _time_run(*built[case.name], latent, steps, repeat)
            if calls != rows[case.name]:
                raise RuntimeError(f"{case.name}: model calls changed between runs ({calls} vs {rows[case.name]})")
            seconds[case.name].append(per_step)
            for r in batch_sizes:  # the bare network, interleaved with the cases
                bare[r].append(_bare_forward(model, r, latent, context))
    records = summarise(cases, seconds, rows, bare, steps)
    for record in records:  # one profiled run per case: the time spent in Steer's own code
        own, total = steer_code_seconds(lambda name=record["case"]: _time_run(*built[name], latent, steps, 0),
                                        package)
        record |= {"steer_code_ms_per_step": 1000 * own / steps, "steer_code_share": own / total}
    return records, seconds, rows, bare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--checkpoint", type=Path, default=MODELS / "checkpoints" / "steer_tiny_sd15.safetensors")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where speed.json and speed.md go")
    parser.add_argument("--only", help="run only the cases whose name contains this text (and their baselines)")
    args = parser.parse_args(argv)

    import_comfy()
    import comfy.sd

    import nodes
    from testbed.comfy import BASE

    asyncio.run(nodes.load_custom_node(str(BASE / "custom_nodes" / "comfyui-steer")))
    steer = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("Steer")}
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(str(args.checkpoint))
    encode = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))  # noqa: E731
    prompts = {"positive": encode("a lighthouse on a rocky coast at sunset"), "negative": encode("blurry, low quality"),
               "middle": encode("a stormy night"), "empty": encode("")}
    cases = _cases(steer, model, prompts)
    if args.only:
        wanted = {c.name for c in cases if args.only in c.name}
        while missing := {c.baseline for c in cases if c.name in wanted and c.baseline} - wanted:
            wanted |= missing
        cases = [c for c in cases if c.name in wanted]
    from testbed.families import load_family

    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    package = BASE / "custom_nodes" / "comfyui-steer"
    sections = [{"title": f"SD1.5-shaped UNet ({args.checkpoint.name}, {args.size}×{args.size})", "model": model,
                 "cases": cases, "latent": torch.zeros(1, 4, args.size // 8, args.size // 8),
                 "context": prompts["positive"][0][0]}]
    if not args.only:
        side = args.size // 8
        for name, double, single in (("flux", "0", "0"), ("wan", "0", "")):
            family = load_family(name)
            sections.append({"title": f"Skip-layer guidance on the tiny {name} ({side}×{side} latent"
                                      f"{', 2 frames' if name == 'wan' else ''})", "model": family.model,
                             "cases": _dit_cases(steer, family, double, single),
                             "latent": family.latent(1, side), "context": family.positive[0][0]})
    for section in sections:
        section["records"], section["seconds"], section["rows"], section["bare"] = _measure(
            section, args.steps, args.repeats, package)
    meta = {"command": "python -m bench.guidance " + " ".join(argv or []), "device": device_name(),
            "threads": torch.get_num_threads(), "steps": args.steps, "repeats": args.repeats, "load": load}
    text = markdown(meta, sections)
    print(text)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "speed.md").write_text(text)
    (args.output_dir / "speed.json").write_text(json.dumps(
        {"meta": meta, "sections": [{"title": section["title"], "records": section["records"],
                                     "seconds_per_step": section["seconds"], "rows": section["rows"],
                                     "bare_forward_seconds": {str(k): v for k, v in section["bare"].items()}}
                                    for section in sections]}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
