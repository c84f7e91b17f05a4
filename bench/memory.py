"""Peak CPU tensor memory of one Euler step: core ComfyUI against Steer for the same branches.

`python -m bench.memory` prints a markdown table (tiny in-process SD1.5 UNet, latent 2×4×32×32). Numbers come from
torch's profiler (testbed/memory.py): the most CPU tensor memory held at once during the step.
"""

from __future__ import annotations

import asyncio
import sys

from testbed.comfy import BASE, import_comfy


def main() -> int:
    import_comfy()
    import comfy.sample
    import comfy.samplers
    import torch
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance
    from comfy_extras.nodes_perpneg import PerpNegGuider

    import nodes
    from testbed.memory import peak_cpu_bytes
    from testbed.models import tiny_inprocess_conds, tiny_inprocess_model
    from testbed.sampling import core_guider, sigmas

    asyncio.run(nodes.load_custom_node(str(BASE / "custom_nodes" / "comfyui-steer")))
    steer = {name: cls for name, cls in nodes.NODE_CLASS_MAPPINGS.items() if name.startswith("Steer")}

    class Bed:
        model = tiny_inprocess_model()
        positive, negative = tiny_inprocess_conds()

    latent = torch.zeros(2, 4, 32, 32)

    def peak(guider) -> float:
        noise = comfy.sample.prepare_noise(latent, 1)
        sampler, schedule = comfy.samplers.sampler_object("euler"), sigmas(guider.model_patcher, 1)
        return peak_cpu_bytes(lambda: guider.sample(noise, latent, sampler, schedule, disable_pbar=True, seed=1)) / 1e6

    def steer_guider(model):
        return steer["SteerGuider"].execute(model, Bed.positive, Bed.negative, 6.0).result[0]

    negative = steer["SteerNegative"].execute(Bed.model, Bed.negative, 1.0, "perpendicular").result[0]
    pag = steer["SteerPAG"].execute(Bed.model, 3.0, "middle.0", 0.0, 1.0).result[0]
    rows = [
        ("CFG (cond, uncond)", peak(core_guider(Bed.model, Bed, 6.0)), "CFGGuider", peak(steer_guider(Bed.model)),
         "SteerGuider"),
        ("3 branches (cond, uncond, negative)",
         peak(PerpNegGuider.execute(Bed.model, Bed.positive, Bed.negative, Bed.negative, 6.0, 1.0).result[0]),
         "PerpNegGuider", peak(steer_guider(negative)), "SteerNegative (perpendicular)"),
        ("CFG + PAG", peak(core_guider(PerturbedAttentionGuidance.execute(Bed.model, 3.0).result[0], Bed, 6.0)),
         "PerturbedAttentionGuidance (2 calls)", peak(steer_guider(pag)), "SteerPAG (1 call)"),
    ]
    print("| branches | core | core peak (MB) | Steer | Steer peak (MB) |\n|---|---|---|---|---|")
    for what, core_peak, core_name, steer_peak, steer_name in rows:
        print(f"| {what} | {core_name} | {core_peak:.2f} | {steer_name} | {steer_peak:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
