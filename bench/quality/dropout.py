"""Condition dropout on the exact mixture: what a LoRA trained by ComfyUI's TrainLoraNode on one class does to the
unconditional prediction and to CFG, with SteerConditionDropout at rate 0 and above (issue 12, item 3).

    .venv/bin/python -m bench.quality.dropout [--seeds 3] [--steps 300]

Ho & Salimans (arXiv 2207.12598) train the unconditional prediction by dropping the condition for 10–20 % of the
samples. Here the exact mixture model (bench/quality/model.py) is fine-tuned through its zero-init `shift` layer with
the real TrainLoraNode (rank 2, AdamW, fp32), on exact samples of class 0 captioned "class 0", in two scenarios:
  - same:     the data is class 0 as the model already knows it (the ideal LoRA is zero; what moves is drift);
  - new look: class 0 moved by δ inside the class plane (a LoRA that teaches the class something new); the truth is
              then the mixture with class 0 moved, for the conditional and the unconditional alike.
The null conditioning is the mixture's empty prompt (all-zero class weights). Measured against the truth of each
scenario, in x0 space, RMS per coordinate over noisy samples of the true mixture at σ across the training range:
unconditional error |D_u − D_u*|, conditional error |D_c − D_c*|, and guidance-direction error
|(D_c − D_u) − (D_c* − D_u*)|; then KSampler (euler, 20 steps) at CFG 3 for class 0: precision (share whose most
likely component is class 0) and Fréchet distance to class 0's exact moments.
Writes bench/results/dropout.json and dropout.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import replace

import torch

from testbed.comfy import BASE, ROOT, import_comfy

RESULTS = ROOT / "bench" / "results"
RATES = (0.0, 0.1, 0.2)
SCENARIOS = ("same", "new look")
CLASS = 0
SHIFT = 1.0  # the new look: class 0 moved by this much along the plane's second axis (class radius is 1.6)
CFG = 3.0
DATASET = 64
BATCH = 8
RANK = 2
LEARNING_RATE = 0.02
EVAL_SAMPLES = 512
EVAL_PERCENTS = (0.1, 0.3, 0.5, 0.7, 0.9)


def truth(mixture, scenario: str):
    """The mixture the LoRA should reach: unchanged, or with class 0's components moved by SHIFT."""
    if scenario == "same":
        return mixture
    offset = SHIFT * mixture.plane[:, 1]
    moved = mixture.means + (mixture.classes == CLASS).to(torch.float64)[:, None] * offset
    return replace(mixture, means=moved)


def train(steer_nodes: dict, scenario: str, rate: float, seed: int, steps: int):
    """A fresh exact model with a LoRA trained on class-0 data of `scenario`; returns (model, truth mixture)."""
    from comfy.weight_adapter import adapter_maps
    from comfy_extras.nodes_train import TrainLoraNode

    from .mixture import LATENT_SHAPE, one_hot
    from .model import class_conditioning, empty_conditioning, mixture_model, mixture_of

    model = mixture_model("eps")
    target = truth(mixture_of(model), scenario)
    data = target.sample(DATASET, one_hot([CLASS], target.num_classes), seed=1000 + seed).to(torch.float32)
    latents = [{"samples": row.reshape(1, *LATENT_SHAPE)} for row in data]
    patched = steer_nodes["SteerConditionDropout"].execute(model, rate, seed, empty_conditioning()).result[0]
    torch.manual_seed(seed)  # TrainLoraNode draws its batches, timesteps and LoRA init from the global RNG
    trained = TrainLoraNode.execute(
        model=[patched], latents=latents, positive=[class_conditioning(CLASS)], batch_size=[BATCH],
        grad_accumulation_steps=[1], steps=[steps], learning_rate=[LEARNING_RATE], rank=[RANK],
        optimizer=["AdamW"], loss_function=["MSE"], seed=[seed], training_dtype=["fp32"], lora_dtype=["fp32"],
        algorithm=[next(iter(adapter_maps))], gradient_checkpointing=[False], existing_lora=["[None]"],
    ).result[0]
    return trained, target


def prediction_errors(model, target, seed: int) -> dict[str, float]:
    """RMS errors of the model's x0 predictions (unconditional, class 0, and their difference) against `target`'s
    exact ones, at noisy samples of the true mixture over EVAL_PERCENTS of the noise range."""
    import comfy.model_management

    from .mixture import LATENT_SHAPE, one_hot

    comfy.model_management.load_models_gpu([model], force_full_load=True)
    sampling = model.get_model_object("model_sampling")
    k = target.num_classes
    errors = {"uncond": [], "cond": [], "direction": []}
    for i, percent in enumerate(EVAL_PERCENTS):
        sigma = float(sampling.percent_to_sigma(percent))
        x0 = target.sample(EVAL_SAMPLES, None, seed=5000 + 31 * seed + i)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9000 + seed + i), dtype=torch.float64)
        x = x0 + sigma * noise
        sigmas = torch.full((EVAL_SAMPLES,), sigma)
        latent = x.reshape(EVAL_SAMPLES, *LATENT_SHAPE).to(torch.float32)
        cond_weights = one_hot([CLASS] * EVAL_SAMPLES, k)
        with torch.no_grad():
            predicted_u = model.model.apply_model(latent, sigmas, c_crossattn=torch.zeros(EVAL_SAMPLES, 1, k))
            predicted_c = model.model.apply_model(latent, sigmas,
                                                  c_crossattn=cond_weights[:, None, :].to(torch.float32))
        d_u, d_c = (p.reshape(EVAL_SAMPLES, -1).to(torch.float64) for p in (predicted_u, predicted_c))
        true_u, true_c = target.denoise(x, sigma, None), target.denoise(x, sigma, cond_weights)
        errors["uncond"].append(float((d_u - true_u).pow(2).mean()))
        errors["cond"].append(float((d_c - true_c).pow(2).mean()))
        errors["direction"].append(float(((d_c - d_u) - (true_c - true_u)).pow(2).mean()))
    return {name: statistics.fmean(values) ** 0.5 for name, values in errors.items()}


def cfg_quality(model, target, seed: int) -> dict[str, float]:
    """KSampler at CFG 3 for class 0 (negative: the empty prompt): precision and Fréchet distance to the truth."""
    import nodes

    from .metrics import frechet_distance, precision
    from .mixture import one_hot
    from .model import class_conditioning, empty_conditioning, empty_latent, flat

    (out,) = nodes.KSampler().sample(model, 77 + seed, 20, CFG, "euler", "normal", class_conditioning(CLASS),
                                     empty_conditioning(), {"samples": empty_latent(EVAL_SAMPLES)})
    x = flat(out["samples"])
    mean, cov = target.moments(one_hot([CLASS], target.num_classes))
    return {"precision": precision(target, x, torch.full((EVAL_SAMPLES,), CLASS)),
            "fd": frechet_distance(x, mean, cov)}


def measure(steer_nodes: dict, seeds: int, steps: int) -> list[dict]:
    from .model import mixture_model

    rows = []
    for scenario in SCENARIOS:
        base = mixture_model("eps")
        target = truth(base.model.diffusion_model.mixture, scenario)
        reference = [prediction_errors(base, target, s) | cfg_quality(base, target, s) for s in range(seeds)]
        rows.append({"scenario": scenario, "rate": None, "runs": reference})
        for rate in RATES:
            runs = []
            for seed in range(seeds):
                trained, target = train(steer_nodes, scenario, rate, seed, steps)
                runs.append(prediction_errors(trained, target, seed) | cfg_quality(trained, target, seed))
            rows.append({"scenario": scenario, "rate": rate, "runs": runs})
            print(scenario, rate, summary(runs), flush=True)
    return rows


def summary(runs: list[dict]) -> dict[str, tuple[float, float]]:
    """(mean, standard deviation over seeds) of every metric."""
    return {key: (statistics.fmean(r[key] for r in runs),
                  statistics.stdev([r[key] for r in runs]) if len(runs) > 1 else 0.0) for key in runs[0]}


def markdown(rows: list[dict], seeds: int, steps: int) -> str:
    columns = ("uncond", "cond", "direction", "precision", "fd")
    lines = [
        f"# Condition dropout on the exact mixture ({seeds} seeds, {steps} TrainLoraNode steps, batch {BATCH}, "
        f"rank {RANK}, lr {LEARNING_RATE}, CFG {CFG})",
        "",
        "RMS x0 errors against the scenario's truth (unconditional, class 0, guidance direction), then KSampler "
        f"at CFG {CFG}: precision for class 0 and Fréchet distance (fd) to its exact moments. mean ± sd over seeds; "
        "`base` is the exact model without a LoRA.",
        "",
        "| scenario | dropout rate | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for row in rows:
        stats = summary(row["runs"])
        rate = "base" if row["rate"] is None else f"{row['rate']:.1f}"
        cells = [f"{stats[c][0]:.4f} ± {stats[c][1]:.4f}" for c in columns]
        lines.append(f"| {row['scenario']} | {rate} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    import_comfy()
    import nodes

    assert asyncio.run(nodes.load_custom_node(str(BASE / "custom_nodes" / "comfyui-steer")))
    steer_nodes = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("Steer")}
    start = time.perf_counter()
    rows = measure(steer_nodes, args.seeds, args.steps)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"seeds": args.seeds, "steps": args.steps, "batch": BATCH, "rank": RANK, "learning_rate": LEARNING_RATE,
            "cfg": CFG, "shift": SHIFT, "dataset": DATASET, "seconds": round(time.perf_counter() - start, 1),
            "machine": "CPU, 2 shared cores"}
    (RESULTS / "dropout.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / "dropout.md").write_text(markdown(rows, args.seeds, args.steps))
    print(RESULTS / "dropout.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
