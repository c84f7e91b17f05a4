"""SteerPAG: perturbed-attention guidance in the same batched model call as CFG (math: guiders/pag.py)."""

from __future__ import annotations

from comfy.ldm.modules.attention import BasicTransformerBlock
from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from comfy_api.v0_0_2 import io

from ..guiders.pag import Block, PerturbedAttention, format_block, parse_blocks
from .checks import Values, check_inputs, node_label, percent_window, validation
from .hooks import with_steer

NODE = "SteerPAG"


def _cross(values: Values) -> None:
    percent_window(values)
    if values.get("blocks") is not None:
        _parsed(values["blocks"])


def _parsed(blocks: str) -> tuple[Block, ...]:
    try:
        return parse_blocks(blocks)
    except ValueError as error:
        raise ValueError(f"input 'blocks': {error}") from None


def available_blocks(model) -> dict[tuple[str, int], int]:
    """(kind, number) → count of transformer blocks with self-attention: UNet blocks, or MMDiT (SD3) joint blocks."""
    diffusion_model = model.get_model_object("diffusion_model")
    if isinstance(diffusion_model, MMDiT):
        return {("joint", number): 1 for number in range(len(diffusion_model.joint_blocks))}
    if not isinstance(diffusion_model, UNetModel):
        raise ValueError(f"this model's diffusion model is {type(diffusion_model).__name__}; Steer's PAG "
                         "works on UNets (SD1.5, SDXL and relatives) and MMDiT (SD3). Refusing instead of silently "
                         "doing nothing.")
    found: dict[tuple[str, int], int] = {}
    for kind, blocks in (("input", diffusion_model.input_blocks), ("middle", [diffusion_model.middle_block]),
                         ("output", diffusion_model.output_blocks)):
        for number, block in enumerate(blocks):
            count = sum(isinstance(m, BasicTransformerBlock) for m in block.modules())
            if count:
                found[(kind, number)] = count
    return found


def model_blocks(model, blocks: tuple[Block, ...]) -> tuple[Block, ...]:
    """`blocks` on the loaded model, a UNet block named without a transformer index expanded to each of its
    transformers (so the patch holds whatever attention keys other nodes set); refuses blocks the model does not
    have, naming those it does."""
    found = available_blocks(model)
    missing = [b for b in blocks if (b[0], b[1]) not in found or (b[2] is not None and b[2] >= found[(b[0], b[1])])]
    if missing:
        have = ", ".join(f"{kind}.{number}" + (f".0–{count - 1}" if count > 1 else "")
                         for (kind, number), count in found.items())
        raise ValueError(f"input 'blocks': {', '.join(map(format_block, missing))} not in this model; it has "
                         f"self-attention in {have}")
    expanded = [(kind, number, index) for kind, number, transformer in blocks
                for index in ([transformer] if transformer is not None or kind == "joint"
                              else range(found[(kind, number)]))]
    return tuple(dict.fromkeys(expanded))


class SteerPAG(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="Steer Perturbed-Attention Guidance",
            category="sampling/steer",
            description="PAG (Ahn et al. 2024): also run the positive with identity self-attention in chosen blocks "
                        "and steer away from that degraded prediction. Computed in the same batched model call as "
                        "the positive and negative (3 rows per image instead of 2 + a second call).",
            inputs=[
                io.Model.Input("model", tooltip="A UNet (SD1.5, SDXL) or MMDiT (SD3) model; works with KSampler and "
                                                "every guider."),
                io.Float.Input("scale", default=3.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="PAG scale s_p in D += s_p·(D_pos − D_perturbed); the paper uses 3.0 "
                                       "(with cfg 4.0). 0 disables it."),
                io.String.Input("blocks", default="middle.0",
                                tooltip="Where self-attention is perturbed: kind.number[.transformer], comma separated "
                                        "— e.g. \"middle.0\" (the paper's choice), \"input.4, middle.0, output.1\", or "
                                        "\"output.0.2\" for one transformer of an SDXL block; \"joint.N\" for "
                                        "SD3's joint blocks (image queries perturbed, text untouched). Unknown blocks "
                                        "are an error that lists the model's blocks."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="First step (as sampling progress 0–1) with PAG."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Last step (progress 0–1) with PAG; ending around 0.7 avoids striped noise "
                                       "with ancestral/SDE samplers."),
            ],
            outputs=[io.Model.Output(tooltip="The model with PAG applied.")],
        )

    @classmethod
    def validate_inputs(cls, blocks: str | None = None, start_percent: float | None = None,
                        end_percent: float | None = None) -> bool | str:
        return validation(cls, {"blocks": blocks, "start_percent": start_percent, "end_percent": end_percent}, _cross)

    @classmethod
    def execute(cls, model, scale: float, blocks: str, start_percent: float, end_percent: float) -> io.NodeOutput:
        check_inputs(cls, {"model": model, "scale": scale, "blocks": blocks, "start_percent": start_percent,
                           "end_percent": end_percent}, _cross)
        try:
            parsed = model_blocks(model, _parsed(blocks))
        except ValueError as error:
            raise ValueError(f"{node_label(cls)}: {error}") from None
        return io.NodeOutput(with_steer(model, PerturbedAttention(scale, parsed, start_percent, end_percent)))
