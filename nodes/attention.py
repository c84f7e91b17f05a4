"""The perturbed branch of PAG inside a batched model call: identity self-attention on the perturbed rows only."""

from __future__ import annotations

import comfy.ldm.modules.attention as attention
import torch
from comfy.model_patcher import set_model_options_patch_replace

from ..guiders.pag import Block, identity_attention


def with_perturbed_attention(model_options: dict, blocks: tuple[Block, ...], perturbed_index: int) -> dict:
    """A per-call copy of model_options whose chosen self-attentions are the identity for the perturbed rows only.

    ComfyUI batches the entries of one call in chunks of equal rows and lists their entry indices in
    `cond_or_uncond`; the rows of the chunk(s) with `perturbed_index` get identity attention, all others run the
    attention that was there before (another pack's replacement, or ComfyUI's own).
    """
    options = model_options.copy()
    replaced = model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    for kind, number, transformer in blocks:
        key = (kind, number) if transformer is None else (kind, number, transformer)
        previous = replaced.get(key)
        options = set_model_options_patch_replace(options, _perturbing(previous, perturbed_index), "attn1", kind,
                                                  number, transformer)
    return options


def _perturbing(previous, perturbed_index: int):
    def attn1(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        chunks = extra_options["cond_or_uncond"]
        perturbed = torch.tensor([index == perturbed_index for index in chunks]).repeat_interleave(
            q.shape[0] // len(chunks)).to(q.device)
        if not bool(perturbed.any()):
            return _attention(previous, q, k, v, extra_options)
        out = identity_attention(v).clone()
        if not bool(perturbed.all()):
            kept = ~perturbed
            options = extra_options | {"cond_or_uncond": [index for index in chunks if index != perturbed_index]}
            out[kept] = _attention(previous, q[kept], k[kept], v[kept], options)
        return out

    return attn1


def _attention(previous, q, k, v, extra_options):
    if previous is not None:
        return previous(q, k, v, extra_options)
    return attention.optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get(
        "attn_precision"), transformer_options=extra_options)
