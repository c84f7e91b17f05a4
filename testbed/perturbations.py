"""Independent references for perturbation guidance, written from the papers and their reference code, not from Steer.

`PerturbedReference` is a guider that computes CFG over core's `calc_cond_batch` and the perturbed positive in a call
of its own, through ComfyUI's own extension points, with the perturbation written out plainly:

- skip-layer: core SkipLayerGuidanceDiT's own block replace, `lambda args, extra: args`;
- PAG on a UNet: core PerturbedAttentionGuidance's attn1 replace, `v`; on Wan's self-attention: `v`;
- PAG on joint attention: diffusers' `PAGJointAttnProcessor2_0` — an additive mask, −inf on the image×image block
  except its diagonal, through torch's scaled_dot_product_attention;
- SEG: the reference code's 2-D Gaussian kernel (outer product, `ceil(6σ)+1` taps made odd, cut as it cuts them),
  reflect padding and `conv2d`, per frame; σ = ∞: the mean query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import comfy.samplers
import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy.model_patcher import set_model_options_patch_replace
from comfy.samplers import calc_cond_batch

from .references import joint_pag, seg_blur


def layout(family: str, model) -> tuple[bool, bool]:
    """(joint attention over text and image, text tokens first), as ComfyUI's model code orders them: Wan's blocks
    attend over the image alone; HunyuanVideo's order was [image, text] until its blocks lost `flipped_img_txt`."""
    if family == "wan":
        return False, True
    if family == "hunyuan_video":
        return True, not any(getattr(b, "flipped_img_txt", False) for b in model.model.diffusion_model.double_blocks)
    return True, True


def _unet_attn1(kind: str, sigma: float, latent_hw: tuple[int, int]):
    def attn1(q, k, v, extra_options):
        if kind == "pag":
            return v
        tokens = q.shape[1]
        factor = round(math.sqrt(latent_hw[0] * latent_hw[1] / tokens))
        q = seg_blur(q, (latent_hw[0] // factor, latent_hw[1] // factor), sigma)
        return optimized_attention(q, k, v, extra_options["n_heads"])

    return attn1


def _attention(order: tuple[bool, bool], kind: str, sigma: float, grid: tuple[int, ...], image_count: int, a, kw):
    """The perturbed attention of one call, for every row (BHLD internally; [B, L, H·D] out, as ComfyUI's)."""
    joint, text_first = order
    q, k, v = a[:3]
    heads = kw["heads"] if "heads" in kw else a[3]
    b = q.shape[0]
    if kw.get("skip_reshape"):
        qh, kh, vh = q, k, v
    else:
        qh, kh, vh = (t.reshape(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    length = qh.shape[2]
    image = slice(0, length) if not joint else (
        slice(length - image_count, length) if text_first else slice(0, image_count))
    if kind == "seg":
        qh = qh.clone()
        qh[:, :, image] = seg_blur(qh[:, :, image], grid, sigma)
        out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh)
    elif not joint:
        out = vh
    else:
        out = joint_pag(qh, kh, vh, image)
    return out.transpose(1, 2).reshape(b, length, -1)


def _dit_block(order: tuple[bool, bool], kind: str, sigma: float, grid: tuple[int, ...], text_tokens: int, single: bool,
               previous=None):
    def block(args, extra):
        if kind == "skip":
            return args
        image_count = args["img"].shape[1] - (text_tokens if single else 0)
        calls = []

        def override(func, *a, **kw):
            calls.append(1)
            if len(calls) > 1:
                return func(*a, **kw)
            return _attention(order, kind, sigma, grid, image_count, a, kw)

        options = args["transformer_options"] | {"optimized_attention_override": override}
        call = args | {"transformer_options": options}
        return previous(call, extra) if previous is not None else extra["original_block"](call)

    return block


def _lumina_layers(kind: str, sigma: float, grid: tuple[int, ...], numbers: set[int], layers: int, text_tokens: int):
    """Lumina 2 has no block replace: its main layers are the calls over all caption + image tokens, `layers` of them
    per model call, in order."""
    image_count = math.prod(grid)
    joint_calls = []

    def override(func, *a, **kw):
        if a[0].shape[2] != text_tokens + image_count:
            return func(*a, **kw)
        joint_calls.append(1)
        if (len(joint_calls) - 1) % layers not in numbers:
            return func(*a, **kw)
        return _attention((True, True), kind, sigma, grid, image_count, a, kw)

    return override


def reference_options(model_options: dict, family: str, kind: str, blocks: tuple[tuple[str, int, int | None], ...],
                      latent_shape: tuple[int, ...], patch: tuple[int, ...], text_tokens: int,
                      sigma: float = math.inf, layers: int = 0, order: tuple[bool, bool] = (True, True)) -> dict:
    """model_options with the perturbation applied to every row of the call (`layers`: Lumina 2's count; `order`:
    `layout(family, model)`)."""
    options = model_options.copy()
    if family in ("sd15", "sd15_v", "sdxl"):
        for block_kind, number, transformer in blocks:
            options = set_model_options_patch_replace(options, _unet_attn1(kind, sigma, latent_shape[-2:]), "attn1",
                                                      block_kind, number, transformer)
        return options
    patch = patch[-len(latent_shape):]
    grid = (*latent_shape[:-len(patch)], *(-(-s // p) for s, p in zip(latent_shape[-len(patch):], patch, strict=True)))
    if family == "lumina2":
        transformer_options = options.get("transformer_options", {}) | {"optimized_attention_override": _lumina_layers(
            kind, sigma, grid, {number for _, number, _ in blocks}, layers, text_tokens)}
        return options | {"transformer_options": transformer_options}
    replaced = model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for block_kind, number, _ in blocks:
        previous = replaced.get((f"{block_kind}_block", number))  # another pack's replace still runs
        options = set_model_options_patch_replace(
            options, _dit_block(order, kind, sigma, grid, text_tokens, block_kind == "single", previous), "dit",
            f"{block_kind}_block", number)
    return options


@dataclass(frozen=True)
class Branch:
    """One perturbation of the reference: kind, blocks, scale, SEG σ and the per-image rescale after its term."""

    kind: str
    blocks: tuple[tuple[str, int, int | None], ...]
    scale: float
    sigma: float = math.inf
    rescale: float = 0.0
    window: tuple[float, float] = (math.inf, 0.0)  # (σ_high, σ_low), both included
    adaptive: float = 0.0  # pamparamm's adaptive_scale

    def scale_at(self, sampling, sigma: torch.Tensor) -> float:
        if not self.window[1] <= float(sigma[0]) <= self.window[0]:
            return 0.0
        if not self.adaptive:
            return self.scale
        t = float(sampling.timestep(sigma[:1]))
        return max(0.0, self.scale - self.scale * self.adaptive ** 4 * (1000 - t))


class PerturbedReference(comfy.samplers.CFGGuider):
    """CFG at `cfg`, then for each branch `D += s·(D_c − D̂_c)` with D̂_c from a call of its own, and where asked
    `D ← D·(r·std(D_c)/std(D) + 1 − r)`, image by image (see the module docstring)."""

    def __init__(self, family, cfg: float, branches: list[Branch], patch: tuple[int, ...] = (2, 2)):
        super().__init__(family.model)
        self.inner_set_conds({"positive": family.positive, "negative": family.negative})
        self.family, self.scale, self.branches, self.patch = family, cfg, branches, patch

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - core's signature
        positive = self.conds["positive"]
        d_c, d_u = calc_cond_batch(self.inner_model, [positive, self.conds["negative"]], x, timestep, model_options)
        denoised = d_u + (d_c - d_u) * self.scale
        text_tokens = self.family.positive[0][0].shape[1]
        for branch in self.branches:
            scale = branch.scale_at(self.model_patcher.get_model_object("model_sampling"), timestep)
            if scale == 0:
                continue
            layers = len(getattr(self.family.model.model.diffusion_model, "layers", []))
            options = reference_options(model_options, self.family.name, branch.kind, branch.blocks,
                                        tuple(x.shape[2:]), self.patch, text_tokens, branch.sigma, layers,
                                        layout(self.family.name, self.family.model))
            (d_p,) = calc_cond_batch(self.inner_model, [positive], x, timestep, options)
            denoised = denoised + scale * (d_c - d_p)
            if branch.rescale:
                for row in range(denoised.shape[0]):
                    factor = d_c[row].std() / denoised[row].std()
                    denoised[row] = denoised[row] * (branch.rescale * factor + 1 - branch.rescale)
        return denoised
