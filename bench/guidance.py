"""Seconds per sampling step of Steer vs core ComfyUI, measured in one run as ratios.

    .venv/bin/python -m bench.guidance [--size 256] [--steps 8] [--repeats 5] [--checkpoint PATH]

Pairs: core CFGGuider vs SteerGuider (cfg 7), and core PerturbedAttentionGuidance vs SteerPAG (cfg 5, PAG 3, middle.0),
plus SteerCFGSkip (percent 0.4–1.0) for what skipping saves, and Steer's CFG++ DPM++ 2M SDE vs core's plain one.
Each case runs `repeats` times, interleaved with its partner so machine load hits both alike; the median is reported
with model calls and rows per step (recorded below every ComfyUI hook). Default model: the test bed's tiny SD1.5
checkpoint; `--checkpoint` takes any SD1.5/SDXL one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from testbed.comfy import MODELS, import_comfy


def _cases(steer_nodes: dict, model, positive, negative) -> dict:
    import comfy.samplers
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    def core(m, cfg):
        guider = comfy.samplers.CFGGuider(m)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return guider

    def steer(m, cfg):
        return steer_nodes["SteerGuider"].execute(m, positive, negative, cfg).result[0]

    steer_pag = steer_nodes["SteerPAG"].execute(model, 3.0, "middle.0", 0.0, 1.0).result[0]
    skip = steer_nodes["SteerCFGSkip"].execute(model, "percent", 0.4, 1.0, 5.42, 0.28, 0.99).result[0]
    return {
        "core CFGGuider (cfg 7)": core(model, 7.0),
        "SteerGuider (cfg 7)": steer(model, 7.0),
        "core PAG (cfg 5, scale 3)": core(PerturbedAttentionGuidance.execute(model, 3.0).result[0], 5.0),
        "SteerPAG (cfg 5, scale 3)": steer(steer_pag, 5.0),
        "SteerCFGSkip percent 0.4–1 (cfg 7)": steer(skip, 7.0),
    }


def _time_run(guider, latent, steps: int, seed: int, sampler_name: str = "euler") -> tuple[float, list[int]]:
    import comfy.sample
    import comfy.samplers

    from testbed.sampling import model_calls, sigmas

    noise = comfy.sample.prepare_noise(latent, seed)
    sampler = comfy.samplers.sampler_object(sampler_name)
    schedule = sigmas(guider.model_patcher, steps)
    with model_calls(guider.model_patcher) as rows:
        start = time.perf_counter()
        guider.sample(noise, latent, sampler, schedule, disable_pbar=True, seed=seed)
        elapsed = time.perf_counter() - start
    return elapsed / steps, rows


def _cfg_pp_sde_rows(model, positive, negative, latent, steps: int, repeats: int) -> list[str]:
    """Table rows: Steer's CFG++ DPM++ 2M SDE (λ 1) vs core's plain dpmpp_2m_sde (cfg 7), the same two rows per call."""
    import comfy.samplers

    def guider(cfg: float):
        core = comfy.samplers.CFGGuider(model)
        core.set_conds(positive, negative)
        core.set_cfg(cfg)
        return core

    cases = {"core dpmpp_2m_sde (cfg 7)": (guider(7.0), "dpmpp_2m_sde"),
             "steer_dpmpp_2m_sde_cfg_pp (λ 1)": (guider(1.0), "steer_dpmpp_2m_sde_cfg_pp")}
    for case, sampler_name in cases.values():  # warm-up
        _time_run(case, latent, 2, 0, sampler_name)
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    rows: dict[str, list[int]] = {}
    for repeat in range(repeats):
        for name, (case, sampler_name) in cases.items():
            per_step, rows[name] = _time_run(case, latent, steps, repeat, sampler_name)
            seconds[name].append(per_step)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    core, steer = cases
    return [f"| {name} | {median[name]:.4f} | {len(rows[name]) / steps:g} | "
            f"{', '.join(map(str, sorted(set(rows[name]))))} | "
            f"{f'{median[steer] / median[core]:.2f}× {core}' if name == steer else ''} |" for name in cases]


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoint", type=Path, default=MODELS / "checkpoints" / "steer_tiny_sd15.safetensors")
    parser.add_argument("--output", type=Path, help="write the results as JSON here too")
    args = parser.parse_args(argv)

    import_comfy()
    import comfy.model_management
    import comfy.sd

    import nodes
    from testbed.comfy import BASE

    asyncio.run(nodes.load_custom_node(str(BASE / "custom_nodes" / "comfyui-steer")))
    steer_nodes = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("Steer")}
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(str(args.checkpoint))
    encode = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))  # noqa: E731
    positive, negative = encode("a lighthouse on a rocky coast at sunset"), encode("blurry, low quality")
    cases = _cases(steer_nodes, model, positive, negative)
    latent = torch.zeros(1, 4, args.size // 8, args.size // 8)

    for guider in cases.values():  # warm-up: model load, first-call allocations
        _time_run(guider, latent, 2, 0)
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    rows: dict[str, list[int]] = {}
    for repeat in range(args.repeats):
        for name, guider in cases.items():
            per_step, rows[name] = _time_run(guider, latent, args.steps, repeat)
            seconds[name].append(per_step)

    device = comfy.model_management.get_torch_device()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    median = {name: statistics.median(values) for name, values in seconds.items()}
    table = [f"Device: {device_name} ({torch.get_num_threads()} threads), model {args.checkpoint.name}, "
             f"{args.size}×{args.size}, euler {args.steps} steps, batch 1, median of {args.repeats}",
             "", "| case | s/step | calls/step | rows per call | ratio |", "|---|---|---|---|---|"]
    baselines = {"SteerGuider (cfg 7)": "core CFGGuider (cfg 7)",
                 "SteerPAG (cfg 5, scale 3)": "core PAG (cfg 5, scale 3)",
                 "SteerCFGSkip percent 0.4–1 (cfg 7)": "core CFGGuider (cfg 7)"}
    for name in cases:
        base = baselines.get(name)
        ratio = f"{median[name] / median[base]:.2f}× {base}" if base else ""
        table.append(f"| {name} | {median[name]:.4f} | {len(rows[name]) / args.steps:g} | "
                     f"{', '.join(map(str, sorted(set(rows[name]))))} | {ratio} |")
    table += _cfg_pp_sde_rows(model, positive, negative, latent, args.steps, args.repeats)
    print("\n".join(table))
    if args.output:
        args.output.write_text(json.dumps({"device": device_name, "args": {k: str(v) for k, v in vars(args).items()},
                                           "seconds_per_step": seconds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
