"""Tiny, deterministic, random-weight models that ComfyUI's real loaders accept, for CPU-only tests.

Run `python -m testbed.models --comfyui PATH --out MODELS_DIR` to write the files (only the missing ones) and check
every file against testbed/sha256.json; `--record` rewrites that json. Key names and shapes come from ComfyUI's own
classes built on the `meta` device, and every key is written: the loaders use strict=False and leave a missing
weight uninitialised (garbage, different on each load). Each tensor draws from its own generator seeded by its
name, so the files are bit-reproducible and one part never shifts another.

`tiny_inprocess_model()` and `tiny_inprocess_conds()` build an even smaller SD1.5-type model in memory for fast
tests; call `testbed.comfy.import_comfy()` first.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher

Conditioning = list[list[Any]]  # ComfyUI CONDITIONING: [[cond tensor, {extras}], ...]

SHA256_FILE = Path(__file__).with_name("sha256.json")

SD15_CHECKPOINT = "checkpoints/steer_tiny_sd15.safetensors"
SD15_UNET = "diffusion_models/steer_tiny_sd15_unet.safetensors"
CLIP_L = "text_encoders/steer_tiny_clip_l.safetensors"
TAESD = "vae/steer_tiny_taesd.safetensors"
SD3_MMDIT = "diffusion_models/steer_tiny_sd3.safetensors"
TAESD3 = "vae/steer_tiny_taesd3.safetensors"
WAN21 = "diffusion_models/steer_tiny_wan21.safetensors"
HUNYUAN_VIDEO = "diffusion_models/steer_tiny_hunyuan_video.safetensors"
SD3_CHECKPOINT = "checkpoints/steer_tiny_sd3.safetensors"  # what the SD3.5 example's checkpoint becomes in tests
SD15_CONTROLNET = "controlnet/steer_tiny_sd15_controlnet.safetensors"

# Weight scales, measured so that two different prompts give clearly different x0 predictions (||D_c - D_u|| is
# ~20% of ||D_c|| for SD1.5, 13-23% for SD3) while every output stays finite.
# Conv/linear weights are N(0, 1/fan_in); He's sqrt(2) gain compounds through TAESD's residual ReLU blocks into
# black-and-white images.
TAESD_OUT_GAIN = 0.2  # the decoder's last conv: pixel std ~0.1 (SD3 latents) to ~0.3 (saturated SD1.5 latents)
BIAS_STD = 0.02
EMBEDDING_STD = 0.02

TINY_CONTEXT_DIM = 64
TINY_WEIGHT_STD = 0.1  # with 0.02, cond and uncond give nearly equal predictions (|Δx0| ~ 6e-6)
TINY_COND_SCALE = 3.0


def unet_config(model_channels: int, channel_mult: list[int], context_dim: int) -> dict[str, Any]:
    """An SD1.5-style UNet config in the shape ComfyUI's detection produces: one res block and one transformer
    per level, plus a middle-block transformer (core PerturbedAttentionGuidance patches middle block 0)."""
    levels = len(channel_mult)
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": model_channels,
        "num_res_blocks": [1] * levels,
        "transformer_depth": [1] * levels,
        "transformer_depth_output": [1] * (2 * levels),
        "channel_mult": channel_mult,
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": False,
        "context_dim": context_dim,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
    }


# Detected as SD15 only with model_channels 320, context_dim 768 and a 1x1-conv proj_in; one level is the minimum.
SD15_UNET_CONFIG = unet_config(320, [1], 768)
SD3_POS_EMBED_MAX = 32  # patches per side: latents up to 64x64 (512x512 images)
SD3_MMDIT_CONFIG: dict[str, Any] = {
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "depth": 1,  # hidden size 64, one head
    "input_size": None,
    "adm_in_channels": 2048,  # pooled CLIP-L (768) + CLIP-G (1280, zeros without it)
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64}},
    "num_patches": SD3_POS_EMBED_MAX**2,
    "pos_embed_max_size": SD3_POS_EMBED_MAX,
    "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": [],
}


def _randn(shape: tuple[int, ...], name: str, std: float) -> torch.Tensor:
    """N(0, std²) from a CPU generator seeded by the tensor's name: reproducible and independent of the others."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") >> 1
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std


def random_weights(
    module: torch.nn.Module,
    salt: str,
    *,
    std: float | None = None,
    overrides: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Every state_dict entry of `module` (best built on `meta`), in fp32: norms at identity, embeddings and biases
    small, conv/linear weights N(0, 1/fan_in), or N(0, std²) when `std` is given. `overrides` supplies the
    entries no rule covers; an entry with neither raises, so no key is ever left out by accident."""
    overrides = overrides or {}
    out: dict[str, torch.Tensor] = {}
    for key, entry in module.state_dict().items():
        shape = tuple(entry.shape)
        owner_name, _, attr = key.rpartition(".")
        owner = module.get_submodule(owner_name)
        if key in overrides:
            tensor = overrides[key].to(torch.float32)
            if tuple(tensor.shape) != shape:
                raise ValueError(f"override {key}: shape {tuple(tensor.shape)}, expected {shape}")
        elif isinstance(owner, (torch.nn.GroupNorm, torch.nn.LayerNorm)) or "RMSNorm" in type(owner).__name__:
            tensor = torch.zeros(shape) if attr == "bias" else torch.ones(shape)  # RMSNorm gains: weight or scale
        elif isinstance(owner, torch.nn.Embedding):
            tensor = _randn(shape, f"{salt}:{key}", EMBEDDING_STD)
        elif attr == "bias":
            tensor = _randn(shape, f"{salt}:{key}", BIAS_STD)
        elif attr == "weight" and len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            tensor = _randn(shape, f"{salt}:{key}", std if std is not None else 1 / math.sqrt(fan_in))
        else:
            raise ValueError(f"no init rule for {key} {shape}")
        out[key] = tensor.contiguous()
    return out


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in tensors.items()}


@cache
def sd15_unet_weights() -> dict[str, torch.Tensor]:
    """The SD1.5 UNet, as UNETLoader reads it (no prefix), fp32."""
    import comfy.ops
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = comfy.supported_models.SD15(SD15_UNET_CONFIG).unet_config
    unet = UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init)
    return random_weights(unet, "sd15_unet")


@cache
def clip_l_weights() -> dict[str, torch.Tensor]:
    """Full-size CLIP-L text model (smaller ones crash or give NaN in ComfyUI), fp16 as real files are."""
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip

    config = json.loads((Path(comfy.sd1_clip.__file__).parent / "sd1_clip_config.json").read_text())
    model = comfy.clip_model.CLIPTextModel(config, torch.float32, "meta", comfy.ops.manual_cast)
    weights = random_weights(model, "clip_l")
    return {k: v.to(torch.float16) for k, v in weights.items()}


@cache
def taesd_weights(latent_channels: int, vae_scale: float, vae_shift: float) -> dict[str, torch.Tensor]:
    """A random TAESD (VAELoader's single-file form), with the scale/shift VAELoader gives the real one."""
    import comfy.taesd.taesd

    with torch.device("meta"):
        taesd = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    salt = f"taesd{latent_channels}"
    last = f"taesd_decoder.{len(taesd.taesd_decoder) - 1}"
    out_shape = tuple(taesd.taesd_decoder[-1].weight.shape)
    out_std = TAESD_OUT_GAIN / math.sqrt(math.prod(out_shape[1:]))
    overrides = {
        "vae_scale": torch.tensor(vae_scale),
        "vae_shift": torch.tensor(vae_shift),
        f"{last}.weight": _randn(out_shape, f"{salt}:{last}.weight", out_std),
        f"{last}.bias": torch.full((3,), 0.5),  # mid-grey images rather than near-black ones
    }
    return random_weights(taesd, salt, overrides=overrides)


@cache
def sd3_mmdit_weights() -> dict[str, torch.Tensor]:
    """A depth-1 SD3-type MMDiT that detection identifies as SD3 (flow), fp32."""
    import comfy.ops
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper, get_2d_sincos_pos_embed

    config = comfy.supported_models.SD3(SD3_MMDIT_CONFIG).unet_config
    mmdit = OpenAISignatureMMDITWrapper(**config, device="meta", operations=comfy.ops.disable_weight_init)
    pos_embed = get_2d_sincos_pos_embed(mmdit.hidden_size, SD3_POS_EMBED_MAX)  # fixed, as in the real model
    overrides = {"pos_embed": torch.from_numpy(pos_embed).float().unsqueeze(0)}
    return random_weights(mmdit, "sd3_mmdit", overrides=overrides)


# Detected as Wan 2.1 text-to-video from the shapes: dim 128 gives one head (dim // 128), text_dim 4096 is fixed.
WAN21_CONFIG: dict[str, Any] = {
    "model_type": "t2v", "patch_size": (1, 2, 2), "in_dim": 16, "dim": 128, "ffn_dim": 64, "freq_dim": 256,
    "text_dim": 4096, "out_dim": 16, "num_heads": 1, "num_layers": 1, "window_size": (-1, -1), "qk_norm": True,
    "cross_attn_norm": True, "eps": 1e-6,
}


@cache
def wan21_weights() -> dict[str, torch.Tensor]:
    """A one-block Wan 2.1 text-to-video model that detection identifies as WAN21_T2V (flow, 5-D latents), fp32.
    Its RMSNorms start at identity; its modulation tables are small, like embeddings."""
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    wan = WanModel(**WAN21_CONFIG, device="meta", operations=comfy.ops.disable_weight_init)
    overrides = {}
    for key, entry in wan.state_dict().items():
        if key.endswith("modulation"):
            overrides[key] = _randn(tuple(entry.shape), f"wan21:{key}", EMBEDDING_STD)
        elif key.endswith((".norm_q.weight", ".norm_k.weight")):
            overrides[key] = torch.ones(entry.shape)
    return random_weights(wan, "wan21", overrides=overrides)


# Detected as HunyuanVideo (text-to-video, flow, 5-D latents): heads = hidden // 128, RoPE axes [16, 56, 56], MLP
# ratio 4 and CLIP-L's pooled 768 are fixed by detection; hidden 256 gives two heads, so a head-layout mix-up shows.
# The text width is the LLaVA-Llama-3 encoder's 4096.
HUNYUAN_VIDEO_CONFIG: dict[str, Any] = {
    "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 256,
    "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "axes_dim": [16, 56, 56], "theta": 256,
    "patch_size": [1, 2, 2], "qkv_bias": True, "guidance_embed": True, "byt5": False, "meanflow": False,
    "use_cond_type_embedding": False, "vision_in_dim": None,
}


def newer_params(params_class: type, defaults: dict[str, Any]) -> dict[str, Any]:
    """The entries of `defaults` that `params_class` (a ComfyUI model's params dataclass) declares: fields newer
    ComfyUI versions added, given their neutral values, so one config builds on old and new versions alike."""
    names = {field.name for field in dataclasses.fields(params_class)}
    return {name: value for name, value in defaults.items() if name in names}


@cache
def hunyuan_video_weights() -> dict[str, torch.Tensor]:
    """A HunyuanVideo of 2 double + 2 single blocks that detection identifies as HunyuanVideo, fp32, in the
    checkpoints' key format on every ComfyUI version: QK-norm gains named "….scale" (0.33's modules are torch
    RMSNorms, "….weight", and its loader renames the checkpoints' ".scale" to that)."""
    import comfy.ops
    from comfy.ldm.hunyuan_video.model import HunyuanVideo, HunyuanVideoParams

    config = HUNYUAN_VIDEO_CONFIG | newer_params(HunyuanVideoParams, {"meanflow_sum": False})
    model = HunyuanVideo(**config, device="meta", operations=comfy.ops.disable_weight_init)
    weights = random_weights(model, "hunyuan_video")
    return {key.removesuffix("_norm.weight") + "_norm.scale" if key.endswith("_norm.weight") else key: tensor
            for key, tensor in weights.items()}


@cache
def sd15_controlnet_weights() -> dict[str, torch.Tensor]:
    """A ControlNet for the tiny SD1.5 UNet (ControlNetLoader detects it from the same shapes), RGB hint, fp32. Its
    zero convolutions are random, not zero, so the control really changes the prediction."""
    import comfy.cldm.cldm
    import comfy.ops
    import comfy.supported_models

    config = dict(comfy.supported_models.SD15(SD15_UNET_CONFIG).unet_config)
    config.pop("out_channels")
    controlnet = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, device="meta",
                                            operations=comfy.ops.disable_weight_init)
    return random_weights(controlnet, "sd15_controlnet")


def _sd15_checkpoint() -> dict[str, torch.Tensor]:
    """All-in-one checkpoint for CheckpointLoaderSimple. text_projection is left out: an SD1.5 checkpoint cannot
    carry it (process_clip_state_dict maps it to an unknown key) and SD1.5 never uses it."""
    clip = {k: v for k, v in clip_l_weights().items() if k != "text_projection.weight"}
    return {
        **_prefixed("model.diffusion_model.", sd15_unet_weights()),
        **_prefixed("cond_stage_model.transformer.", clip),
        **_prefixed("first_stage_model.", taesd_weights(4, 0.18215, 0.0)),
    }


def _sd3_checkpoint() -> dict[str, torch.Tensor]:
    """All-in-one SD3 checkpoint (MMDiT, CLIP-L only, 16-channel TAESD), shaped like sd3.5_large_fp8_scaled."""
    return {
        **_prefixed("model.diffusion_model.", sd3_mmdit_weights()),
        **_prefixed("text_encoders.clip_l.transformer.", clip_l_weights()),
        **_prefixed("first_stage_model.", taesd_weights(16, 1.5305, 0.0609)),
    }


BUILDERS: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
    SD15_CHECKPOINT: _sd15_checkpoint,
    SD15_UNET: sd15_unet_weights,
    CLIP_L: clip_l_weights,
    TAESD: lambda: taesd_weights(4, 0.18215, 0.0),
    SD3_MMDIT: sd3_mmdit_weights,
    TAESD3: lambda: taesd_weights(16, 1.5305, 0.0609),
    WAN21: wan21_weights,
    HUNYUAN_VIDEO: hunyuan_video_weights,
    SD3_CHECKPOINT: _sd3_checkpoint,
    SD15_CONTROLNET: sd15_controlnet_weights,
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_models(out: Path, record: bool = False) -> list[str]:
    """Write the missing files under `out`, then check them all against sha256.json (or rewrite it when `record`).
    Returns the names generated; raises SystemExit with a clear message on a mismatch."""
    from safetensors.torch import save_file

    generated = []
    for name, build in BUILDERS.items():
        path = out / name
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        save_file(build(), str(partial))
        partial.replace(path)
        generated.append(name)

    hashes = {name: sha256(out / name) for name in BUILDERS}
    if record:
        SHA256_FILE.write_text(json.dumps(hashes, indent=2) + "\n")
        return generated
    recorded = json.loads(SHA256_FILE.read_text()) if SHA256_FILE.exists() else {}
    bad = [name for name in BUILDERS if recorded.get(name) != hashes[name]]
    if bad:
        lines = [f"  {out / name}: sha256 {hashes[name]}, recorded {recorded.get(name, 'nothing')}" for name in bad]
        raise SystemExit(
            "tiny models differ from testbed/sha256.json:\n" + "\n".join(lines) + "\n"
            "A file left over from an older generator: delete it and run again. The generator, torch or ComfyUI "
            "changed on purpose: run `python -m testbed.models --record` and commit testbed/sha256.json."
        )
    return generated


def tiny_inprocess_model(disable_dynamic: bool = False) -> ModelPatcher:
    """A ~1 M-parameter SD1.5-type model (ComfyUI BaseModel in a ModelPatcher, CPU, fp32) for tests that sample
    in-process in seconds; weights N(0, 0.1²) from fixed seeds, so every call builds an identical model. Like the
    patchers of core's loaders it carries the factory that builds it again (`cached_patcher_init`): newer ComfyUI
    deep-copies a model through it (0.33: TrainLoraNode, MultiGPU clones), passing `disable_dynamic`."""
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.SD15(unet_config(32, [1, 2], TINY_CONTEXT_DIM))
    model_config.unet_config["num_heads"] = 2  # SD15 forces 8 heads, 4 channels each at this width
    model_config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = model_config.get_model({}, device=cpu)
    model.diffusion_model.load_state_dict(random_weights(model.diffusion_model, "tiny_sd15", std=TINY_WEIGHT_STD))
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    patcher.cached_patcher_init = (tiny_inprocess_model, ())
    return patcher


def tiny_inprocess_conds(tokens: int = 8, seed: int = 0) -> tuple[Conditioning, Conditioning]:
    """(positive, negative) CONDITIONING for `tiny_inprocess_model`, `[[tensor [1, tokens, 64], {}]]` each, drawn
    from `seed` and scaled ×3 so the two predictions really differ and guidance tests assert something."""
    generator = torch.Generator().manual_seed(seed)
    positive, negative = (
        torch.randn((1, tokens, TINY_CONTEXT_DIM), generator=generator) * TINY_COND_SCALE for _ in range(2)
    )
    return [[positive, {}]], [[negative, {}]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, help="ComfyUI folder (default: the test bed's)")
    parser.add_argument("--out", type=Path, help="models folder (default: the test bed's .testbed/base/models)")
    parser.add_argument("--record", action="store_true", help="rewrite testbed/sha256.json from the files")
    args = parser.parse_args(argv)

    from testbed import comfy as testbed_comfy

    if args.comfyui is not None:
        os.environ["COMFYUI_PATH"] = str(args.comfyui.resolve())
    testbed_comfy.import_comfy()
    out = (args.out or testbed_comfy.MODELS).resolve()

    start = time.perf_counter()
    generated = ensure_models(out, record=args.record)
    size = sum((out / name).stat().st_size for name in BUILDERS)
    verdict = "sha256 recorded" if args.record else "sha256 ok"
    print(
        f"tiny models: {len(BUILDERS)} files in {out} ({len(generated)} generated, {size / 1e6:.0f} MB), "
        f"{verdict}, {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
