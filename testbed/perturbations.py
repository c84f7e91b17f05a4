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

import comfy.samplers
import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy.model_patcher import set_model_options_patch_replace
from comfy.samplers import calc_cond_batch

# Per family: (joint attention over text and image, text tokens first) — read from ComfyUI's model code.
LAYOUT = {"sd3": (True, True), "flux": (True, True), "chroma": (True, True), "qwen_image": (True, True),
          "hunyuan_video": (True, False), "wan": (False, True)}


def seg_kernel(sigma: float, side: int) -> torch.Tensor:
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    size = min(size, side - (side % 2 - 1))
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel = pdf / pdf.sum()
    return torch.mm(kernel[:, None], kernel[None, :])


def seg_blur(q: torch.Tensor, grid: tuple[int, ...], sigma: float) -> torch.Tensor:
    """Image queries [..., tokens, dim] on `grid` ((frames,) h, w), blurred per frame as the SEG reference code does
    (square kernels: the test grids are square)."""
    height, width = grid[-2:]
    frames = math.prod(grid[:-2])
    shape = q.shape
    x = q.reshape(-1, frames, height, width, shape[-1]).permute(0, 1, 4, 2, 3).reshape(-1, shape[-1], height, width)
    if sigma == math.inf:
        x = x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    else:
        kernel = seg_kernel(sigma, width).to(x.dtype)
        pad = kernel.shape[0] // 2
        x = torch.nn.functional.pad(x, [pad] * 4, mode="reflect")
        x = torch.nn.functional.conv2d(x, kernel.expand(shape[-1], 1, *kernel.shape).contiguous(), groups=shape[-1])
    return x.reshape(-1, frames, shape[-1], height, width).permute(0, 1, 3, 4, 2).reshape(shape)


def _unet_attn1(kind: str, sigma: float, latent_hw: tuple[int, int]):
    def attn1(q, k, v, extra_options):
        if kind == "pag":
            return v
        tokens = q.shape[1]
        factor = round(math.sqrt(latent_hw[0] * latent_hw[1] / tokens))
        q = seg_blur(q, (latent_hw[0] // factor, latent_hw[1] // factor), sigma)
        return optimized_attention(q, k, v, extra_options["n_heads"])

    return attn1


def _dit_block(family: str, kind: str, sigma: float, grid: tuple[int, ...], text_tokens: int, single: bool):
    joint, text_first = LAYOUT[family]

    def block(args, extra):
        if kind == "skip":
            return args
        image_count = args["img"].shape[1] - (text_tokens if single else 0)
        calls = []

        def override(func, *a, **kw):
            calls.append(1)
            if len(calls) > 1:
                return func(*a, **kw)
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
                mask = torch.zeros(length, length)
                mask[image, image] = float("-inf")
                mask[image, image].fill_diagonal_(0)
                out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
            return out.transpose(1, 2).reshape(b, length, -1)

        options = args["transformer_options"] | {"optimized_attention_override": override}
        return extra["original_block"](args | {"transformer_options": options})

    return block


def reference_options(model_options: dict, family: str, kind: str, blocks: tuple[tuple[str, int, int | None], ...],
                      latent_shape: tuple[int, ...], patch: tuple[int, ...], text_tokens: int,
                      sigma: float = math.inf) -> dict:
    """model_options with the perturbation applied to every row of the call."""
    options = model_options.copy()
    if family in ("sd15", "sd15_v", "sdxl"):
        for block_kind, number, transformer in blocks:
            options = set_model_options_patch_replace(options, _unet_attn1(kind, sigma, latent_shape[-2:]), "attn1",
                                                      block_kind, number, transformer)
        return options
    patch = patch[-len(latent_shape):]
    grid = (*latent_shape[:-len(patch)], *(-(-s // p) for s, p in zip(latent_shape[-len(patch):], patch, strict=True)))
    for block_kind, number, _ in blocks:
        options = set_model_options_patch_replace(
            options, _dit_block(family, kind, sigma, grid, text_tokens, block_kind == "single"), "dit",
            f"{block_kind}_block", number)
    return options


class PerturbedReference(comfy.samplers.CFGGuider):
    """CFG at `cfg` plus `scale·(D_c − D̂_c)`, the perturbed positive in its own call (see the module docstring)."""

    def __init__(self, family, cfg: float, scale: float, kind: str, blocks, patch: tuple[int, ...] = (2, 2),
                 sigma: float = math.inf):
        super().__init__(family.model)
        self.inner_set_conds({"positive": family.positive, "negative": family.negative})
        self.family, self.scale, self.pag_scale = family, cfg, scale
        self.kind, self.blocks, self.patch, self.sigma = kind, blocks, patch, sigma

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - core's signature
        positive = self.conds["positive"]
        d_c, d_u = calc_cond_batch(self.inner_model, [positive, self.conds["negative"]], x, timestep, model_options)
        text_tokens = self.family.positive[0][0].shape[1]
        options = reference_options(model_options, self.family.name, self.kind, self.blocks, tuple(x.shape[2:]),
                                    self.patch, text_tokens, self.sigma)
        (d_p,) = calc_cond_batch(self.inner_model, [positive], x, timestep, options)
        return d_u + (d_c - d_u) * self.scale + self.pag_scale * (d_c - d_p)
