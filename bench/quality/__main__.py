"""Run the quality lab: `.venv/bin/python -m bench.quality [--full] [--per-class N] [--seeds N]`.

Writes bench/results/quality.json (one record per setting), quality.md (tables, claims) and quality_*.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from testbed.comfy import BASE, import_comfy

RESULTS = Path(__file__).resolve().parent.parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every sweep point, more images and seeds (longer)")
    parser.add_argument("--per-class", type=int, help="images per class per run (default 300, --full 1000)")
    parser.add_argument("--seeds", type=int, help="independent seeds per setting (default 3, --full 5)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true",
                        help="re-check the claims and rewrite quality.md and the frontier/rows plots from the "
                             "existing quality.json (no sampling)")
    args = parser.parse_args(argv)
    if args.report_only:
        return _report_only(args.out)
    per_class = args.per_class or (1000 if args.full else 300)
    seeds = list(range(args.seeds or (5 if args.full else 3)))

    import_comfy()
    import nodes

    asyncio.run(nodes.load_custom_node(str(BASE / "custom_nodes" / "comfyui-steer")))
    steer = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("Steer")}

    from bench.guidance import device_name

    from . import report
    from .claims import check_all
    from .lab import Lab, Setting
    from .metrics import class_metrics
    from .model import flat, mixture_of
    from .sweeps import settings

    start = time.perf_counter()
    lab = Lab(steer, per_class)
    mixture = mixture_of(lab.models["eps"])
    floors = [class_metrics(mixture, _exact(mixture, lab.classes, 700 + s), lab.classes, s) for s in seeds]
    floor = {}
    for name in floors[0]:
        values = [f[name] for f in floors]
        floor[name], floor[name + "_sd"] = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0
    todo = settings(args.full)
    records = []
    for index, setting in enumerate(todo, 1):
        records.append(lab.measure(setting, seeds))
        r = records[-1]
        print(f"[{index}/{len(todo)}] {r['method']} {r['model']} {r['sampler']} {r['steps']} s={r['scale']:g}: "
              f"precision {r['precision']:.3f} FD {r['fd']:.2f} SW {r['sw']:.3f} rows {r['rows']:g}", flush=True)
    claims = check_all(records)
    minutes = (time.perf_counter() - start) / 60

    samples = {}
    for scale in (1.0, 3.0, 8.0):
        out, _ = lab.sample(Setting("cfg", scale), seeds[0])
        samples[scale] = (flat(out), lab.classes)

    meta = {"command": "python -m bench.quality" + (" --full" if args.full else ""), "minutes": minutes,
            "device": f"{device_name()} ({torch.get_num_threads()} threads)", "per_class": per_class,
            "images": len(lab.classes), "seeds": seeds,
            "model": f"{mixture.num_classes}-class Gaussian mixture, {mixture.means.shape[0]} components, d = "
                     f"{mixture.dim} (latent 4×4×4); EPS (SD1.5 schedule) and flow (shift 3) variants"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps({"meta": meta, "floor": floor, "claims": claims,
                                                       "records": records}, indent=1, ensure_ascii=False))
    (args.out / "quality.md").write_text(report.markdown(meta, floor, records, claims))
    report.frontier_plot(records, floor, args.out / "quality_frontier.png")
    report.rows_plot(records, args.out / "quality_rows.png")
    report.samples_plot(mixture, samples, args.out / "quality_samples_2d.png")
    for claim in claims.values():
        print(f"{claim['verdict']:>14}: {claim['claim']}\n                {claim['evidence']}")
    print(f"{len(records)} settings in {minutes:.1f} min; results in {args.out}")
    return 0


def _report_only(out: Path) -> int:
    from . import report
    from .claims import check_all

    data = json.loads((out / "quality.json").read_text())
    data["claims"] = check_all(data["records"])
    (out / "quality.json").write_text(json.dumps(data, indent=1, ensure_ascii=False))
    (out / "quality.md").write_text(report.markdown(data["meta"], data["floor"], data["records"], data["claims"]))
    report.frontier_plot(data["records"], data["floor"], out / "quality_frontier.png")
    report.rows_plot(data["records"], out / "quality_rows.png")
    return 0


def _exact(mixture, classes: torch.Tensor, seed: int) -> torch.Tensor:
    """Exact samples with the lab's class layout (the metrics' floor)."""
    from .mixture import one_hot

    return torch.cat([mixture.sample(int((classes == k).sum()), one_hot([k], mixture.num_classes), seed=seed + k)
                      for k in classes.unique().tolist()])


if __name__ == "__main__":
    sys.exit(main())
