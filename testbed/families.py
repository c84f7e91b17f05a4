"""Every model family Steer supports, as a tiny deterministic model with a positive and a negative that differ.

`load_family(name)` returns a `Family` for one of `FAMILIES`:

| name            | what it is                               | how it is built                                         |
|-----------------|------------------------------------------|---------------------------------------------------------|
| `sd15`          | SD1.5, EPS                               | the test bed's checkpoint via the checkpoint loader     |
| `sd15_v`        | SD1.5 fine-tune with v-prediction        | the same + core ModelSamplingDiscrete (v_prediction)    |
| `sdxl`          | SDXL, EPS, pooled / ADM conditioning     | in-process from comfy.supported_models.SDXL (see below) |
| `sd3`           | SD3 MMDiT, flow                          | the test bed's file via the diffusion-model loader      |
| `flux`          | Flux-dev, flow with a guidance embedding | in-process from comfy.supported_models.Flux (see below) |
| `wan`           | Wan 2.1 text-to-video, flow, 5-D latents | the test bed's file via the diffusion-model loader      |
| `chroma`        | Chroma (Flux blocks, no pooled vector)   | in-process from comfy.supported_models.Chroma           |
| `hunyuan_video` | HunyuanVideo t2v, flow, 5-D latents      | the test bed's file via the diffusion-model loader      |
| `lumina2`       | Lumina 2 (NextDiT, no `dit` replaces)    | in-process from comfy.supported_models.Lumina2          |
| `qwen_image`    | Qwen-Image, 5-D latents of one frame     | in-process from comfy.supported_models.QwenImage        |

Layer counts: the DiTs with two block kinds have 2 double + 2 single blocks, the others 2 blocks (the Wan file 1),
so the choice of a layer matters; the HunyuanVideo file is hidden 256 with 2 heads (46 MB). SDXL, Flux, Chroma,
Lumina 2 and Qwen-Image cannot be files here: ComfyUI detects SDXL only with its full depth ([0, 0, 2, 2, 10, 10]
transformers, 2.6 B parameters), Flux and Chroma only with hidden size 3072 (24 heads × 128; Chroma's modulation
approximator is 5 × 5120 wide), Lumina 2 only with 32 heads × 128 (or its released widths 2304 / 3840), Qwen-Image
only at its full width (24 heads × 128, text 3584). They are built from ComfyUI's own model config classes, as the
loader would build them, with tiny sizes. Every text encoder here is far too big, so the conds are hand-built tensors
of the encoder's width carrying what it would return (SDXL: `pooled_output` of 1280 for the ADM vector; Flux:
`pooled_output` and, through core's FluxGuidance node, `guidance` 3.5; Chroma: T5's 4096 and `pooled_output` None;
HunyuanVideo: LLaVA-Llama-3's 4096 and CLIP-L's pooled 768, guidance 6.0 being ComfyUI's default; Wan: umT5's 4096;
Lumina 2: Gemma-2-2B's 2304, ComfyUI derives `num_tokens` from it; Qwen-Image: Qwen2.5-VL's 3584). No family needs
an attention mask (every token is real). Call `testbed.comfy.import_comfy()` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import torch

from .comfy import MODELS
from .models import (
    CLIP_L,
    HUNYUAN_VIDEO,
    SD3_MMDIT,
    SD15_CHECKPOINT,
    WAN21,
    Conditioning,
    newer_params,
    random_weights,
    unet_config,
)

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher

FAMILIES = ("sd15", "sd15_v", "sdxl", "sd3", "flux", "wan", "chroma", "hunyuan_video", "lumina2", "qwen_image")

POSITIVE_PROMPT = "a red apple on a wooden table, studio light"
NEGATIVE_PROMPT = "blurry, low quality, watermark"
THIRD_PROMPT = "oversaturated, cartoon"

SDXL_CONTEXT_DIM = 64
SDXL_POOLED_DIM = 1280  # fixed by ComfyUI's SDXL ADM: pooled 1280 + 6 size embeddings of 256 = 2816
FLUX_CONFIG: dict[str, Any] = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 64,
    "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
    "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}
FLUX_GUIDANCE = 3.5
WAN_TEXT_DIM = 4096
T5_XXL_DIM = 4096  # Chroma's text encoder
LLAVA_LLAMA3_DIM = 4096  # HunyuanVideo's text encoder; its CLIP-L adds a pooled 768
CLIP_L_POOLED_DIM = 768
GEMMA2_2B_DIM = 2304  # Lumina 2's text encoder
QWEN25_VL_7B_DIM = 3584  # Qwen-Image's text encoder
# Chroma: Flux's blocks without modulation layers; the approximator's input (16 + 16 + 32) and output (the hidden
# size) are fixed by the model.
CHROMA_CONFIG: dict[str, Any] = {
    "image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": T5_XXL_DIM, "hidden_size": 64,
    "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12], "theta": 10000,
    "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": 64, "hidden_dim": 64, "n_layers": 2,
}
# Lumina 2: 2 main layers and 2 refiner layers of each kind; 2 query heads sharing 1 key/value head (grouped-query
# attention, as the released 24/8).
LUMINA2_CONFIG: dict[str, Any] = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64, "cap_feat_dim": GEMMA2_2B_DIM,
    "n_layers": 2, "n_refiner_layers": 2, "n_heads": 2, "n_kv_heads": 1, "multiple_of": 16, "ffn_dim_multiplier": 4.0,
    "norm_eps": 1e-5, "qk_norm": True, "axes_dims": [8, 12, 12], "axes_lens": [300, 512, 512], "rope_theta": 10000.0,
}
QWEN_IMAGE_CONFIG: dict[str, Any] = {
    "image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 2,
    "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": QWEN25_VL_7B_DIM,
    "axes_dims_rope": (8, 12, 12),
}
QWEN_IMAGE_WEIGHT_STD = 0.15  # its text is RMS-normalised: with N(0, 1/fan_in) the two prompts differ by ~8% only


@dataclass(frozen=True)
class Family:
    """A model of one family, a positive, a negative and a third prompt (an extra negative) for it, and the shape of
    its latents."""

    name: str
    model: ModelPatcher
    positive: Conditioning
    negative: Conditioning
    third: Conditioning
    latent_shape: tuple[int, ...]  # one sample, without the batch dimension

    @property
    def channels(self) -> int:
        return self.latent_shape[0]

    def latent(self, batch: int = 1, size: int = 8) -> torch.Tensor:
        """An empty latent of `batch` samples, `size`×`size` (Wan, HunyuanVideo: 2 frames of that; Qwen-Image: 1)."""
        return torch.zeros(batch, *self.latent_shape[:-2], size, size)


def hand_built_conds(tokens: int, width: int, seed: int, scale: float = 3.0,
                     extras: dict[str, int | None] | None = None, count: int = 3) -> list[Conditioning]:
    """`count` CONDITIONINGs `[[tensor [1, tokens, width], {extras}]]` (positive, negative, third), drawn from `seed`;
    `extras` names pooled vectors to add (name → width; None adds the key with the value None, as an encoder without
    a pooled output returns it). Scaled so that their predictions clearly differ."""
    generator = torch.Generator().manual_seed(seed)
    conds = []
    for _ in range(count):
        cond = torch.randn((1, tokens, width), generator=generator) * scale
        extra = {name: None if size is None else torch.randn((1, size), generator=generator)
                 for name, size in (extras or {}).items()}
        conds.append([[cond, extra]])
    return conds


def _encode(clip, text: str) -> Conditioning:
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def _in_process(model_config) -> ModelPatcher:
    import comfy.model_patcher

    model_config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = model_config.get_model({}, device=cpu)
    return model, comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def _sd15() -> Family:
    import comfy.sd

    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(str(MODELS / SD15_CHECKPOINT))
    return Family("sd15", model, *(_encode(clip, p) for p in (POSITIVE_PROMPT, NEGATIVE_PROMPT, THIRD_PROMPT)),
                  (4, 8, 8))


def _sd15_v() -> Family:
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    sd15 = load_family("sd15")
    (model,) = ModelSamplingDiscrete().patch(sd15.model, "v_prediction", False)
    return Family("sd15_v", model, sd15.positive, sd15.negative, sd15.third, sd15.latent_shape)


def _sdxl() -> Family:
    import comfy.supported_models

    config = unet_config(32, [1, 2], SDXL_CONTEXT_DIM) | {
        "adm_in_channels": 2816, "num_classes": "sequential", "use_linear_in_transformer": True,
    }
    model_config = comfy.supported_models.SDXL(config)
    model_config.unet_config["num_head_channels"] = 16  # SDXL forces 64-channel heads, wider than this model
    model, patcher = _in_process(model_config)
    model.diffusion_model.load_state_dict(random_weights(model.diffusion_model, "tiny_sdxl", std=0.1))
    conds = hand_built_conds(8, SDXL_CONTEXT_DIM, seed=1, extras={"pooled_output": SDXL_POOLED_DIM})
    return Family("sdxl", patcher, *conds, (4, 8, 8))


def _sd3() -> Family:
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(MODELS / SD3_MMDIT))
    clip = comfy.sd.load_clip([str(MODELS / CLIP_L)], clip_type=comfy.sd.CLIPType.SD3)
    return Family("sd3", model, *(_encode(clip, p) for p in (POSITIVE_PROMPT, NEGATIVE_PROMPT, THIRD_PROMPT)),
                  (16, 8, 8))


def _flux() -> Family:
    import comfy.supported_models
    from comfy.ldm.flux.model import FluxParams

    # Newer ComfyUI (0.8+) also needs the text-id axes, which Flux-dev (unlike Flux 2) leaves empty.
    config = FLUX_CONFIG | newer_params(FluxParams, {"txt_ids_dims": []})
    model, patcher = _in_process(comfy.supported_models.Flux(config))
    model.diffusion_model.load_state_dict(random_weights(model.diffusion_model, "tiny_flux"))
    from comfy_extras.nodes_flux import FluxGuidance

    conds = hand_built_conds(8, FLUX_CONFIG["context_in_dim"], seed=2,
                             extras={"pooled_output": FLUX_CONFIG["vec_in_dim"]})
    # As Flux-dev workflows do: the distilled guidance goes into the conds through core's FluxGuidance node.
    return Family("flux", patcher, *(FluxGuidance.execute(cond, FLUX_GUIDANCE).result[0] for cond in conds),
                  (16, 8, 8))


def _wan() -> Family:
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(MODELS / WAN21))
    return Family("wan", model, *hand_built_conds(8, WAN_TEXT_DIM, seed=3), (16, 2, 8, 8))


def _chroma() -> Family:
    import comfy.supported_models
    from comfy.ldm.chroma.model import ChromaParams

    config = CHROMA_CONFIG | newer_params(ChromaParams, {"txt_ids_dims": [], "vec_in_dim": None})
    model, patcher = _in_process(comfy.supported_models.Chroma(config))
    model.diffusion_model.load_state_dict(random_weights(model.diffusion_model, "tiny_chroma"))
    conds = hand_built_conds(8, T5_XXL_DIM, seed=4, extras={"pooled_output": None})
    return Family("chroma", patcher, *conds, (16, 8, 8))


def _hunyuan_video() -> Family:
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(MODELS / HUNYUAN_VIDEO))
    conds = hand_built_conds(8, LLAVA_LLAMA3_DIM, seed=5, extras={"pooled_output": CLIP_L_POOLED_DIM})
    return Family("hunyuan_video", model, *conds, (16, 2, 8, 8))


def _lumina2() -> Family:
    import comfy.supported_models

    model, patcher = _in_process(comfy.supported_models.Lumina2(LUMINA2_CONFIG))
    model.diffusion_model.load_state_dict(random_weights(model.diffusion_model, "tiny_lumina2"))
    return Family("lumina2", patcher, *hand_built_conds(8, GEMMA2_2B_DIM, seed=6), (16, 8, 8))


def _qwen_image() -> Family:
    import comfy.supported_models

    model, patcher = _in_process(comfy.supported_models.QwenImage(QWEN_IMAGE_CONFIG))
    weights = random_weights(model.diffusion_model, "tiny_qwen_image", std=QWEN_IMAGE_WEIGHT_STD)
    model.diffusion_model.load_state_dict(weights)
    return Family("qwen_image", patcher, *hand_built_conds(8, QWEN25_VL_7B_DIM, seed=7), (16, 1, 8, 8))


_BUILDERS = {"sd15": _sd15, "sd15_v": _sd15_v, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "wan": _wan,
             "chroma": _chroma, "hunyuan_video": _hunyuan_video, "lumina2": _lumina2, "qwen_image": _qwen_image}


@cache
def load_family(name: str) -> Family:
    """The family's tiny model (built once per process) with its positive, negative and latent shape."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model family {name!r}; the test bed has {', '.join(FAMILIES)}")
    return _BUILDERS[name]()
