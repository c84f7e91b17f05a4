"""Where adaptive CFG-skip (Castillo et al., https://arxiv.org/abs/2312.12487) would stop guiding, per model type.

    .venv/bin/python -m bench.adaptive_skip [--steps 20] [--cfg 5]

Runs plain core CFG (euler, 64×64, batch 1, seed 0) on the test bed's tiny SD1.5 checkpoint (EPS) and tiny SD3 (flow)
and records, at every step, the cosine between the cond and uncond *noise predictions* (what the method was calibrated
on: `(x − α·D)/σ`, α = 1 on EPS, 1 − σ on flow) and the cosine between `x − D_c` and `x − D_u` (what Steer compared on
every model before: the noise on EPS, but proportional to the velocity on flow). For each threshold it reports the
first step at which each cosine reaches it, i.e. where an image would switch to cond-only. Writes
bench/results/adaptive_skip.json. Random-weight models: the numbers show the mechanics, not real models' values.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from testbed.comfy import MODELS, import_comfy

THRESHOLDS = (0.9, 0.95, 0.99, 0.995)
PROMPTS = ("a red apple on a wooden table, studio light", "blurry, low quality, watermark")


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def _trace(model, positive, negative, channels: int, steps: int, cfg: float, flow: bool) -> list[dict]:
    import comfy.sample
    import comfy.samplers

    rows: list[dict] = []

    def record(args: dict) -> torch.Tensor:
        x, sigma = args["input"], float(args["sigma"][0])
        alpha = 1.0 - sigma if flow else 1.0
        rows.append({"sigma": sigma,
                     "noise_cosine": _cosine(x - alpha * args["cond_denoised"], x - alpha * args["uncond_denoised"]),
                     "x_minus_d_cosine": _cosine(x - args["cond_denoised"], x - args["uncond_denoised"])})
        return args["denoised"]

    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(record)
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    latent = torch.zeros(1, channels, 8, 8)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps).cpu()
    guider.sample(comfy.sample.prepare_noise(latent, 0), latent, comfy.samplers.sampler_object("euler"), sigmas,
                  disable_pbar=True, seed=0)
    return rows


def _first_step(rows: list[dict], key: str, threshold: float) -> int | None:
    return next((i for i, row in enumerate(rows) if row[key] >= threshold), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "adaptive_skip.json")
    args = parser.parse_args()
    import_comfy()
    import comfy.sd

    def encode(clip) -> list:
        return [clip.encode_from_tokens_scheduled(clip.tokenize(text)) for text in PROMPTS]

    sd15, sd15_clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(MODELS / "checkpoints" /
                                                                       "steer_tiny_sd15.safetensors"))
    sd3 = comfy.sd.load_diffusion_model(str(MODELS / "diffusion_models" / "steer_tiny_sd3.safetensors"))
    sd3_clip = comfy.sd.load_clip([str(MODELS / "text_encoders" / "steer_tiny_clip_l.safetensors")],
                                  clip_type=comfy.sd.CLIPType.SD3)
    results = {}
    for name, model, clip, channels, flow in (("tiny SD1.5 (EPS)", sd15, sd15_clip, 4, False),
                                              ("tiny SD3 (flow)", sd3, sd3_clip, 16, True)):
        rows = _trace(model, *encode(clip), channels, args.steps, args.cfg, flow)
        first = {str(t): {"noise": _first_step(rows, "noise_cosine", t),
                          "x_minus_d": _first_step(rows, "x_minus_d_cosine", t)} for t in THRESHOLDS}
        results[name] = {"steps": rows, "first_step_at_or_above": first}
        print(name)
        for i, row in enumerate(rows):
            print(f"  step {i:2d} σ {row['sigma']:8.4f}  cos(noise) {row['noise_cosine']:.5f}  "
                  f"cos(x − D) {row['x_minus_d_cosine']:.5f}")
        print("  first step ≥ threshold (noise / x − D):",
              ", ".join(f"{t}: {v['noise']} / {v['x_minus_d']}" for t, v in first.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cfg": args.cfg, "steps": args.steps, "sampler": "euler", "scheduler": "normal",
                                    "latent": "8x8, batch 1, seed 0", "models": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
