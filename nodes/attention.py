"""The perturbed branch of PAG inside a batched model call: identity self-attention on the perturbed rows only."""

from __future__ import annotations

import itertools

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
        # ComfyUI tries (kind, number, transformer) first, then (kind, number): so does the lookup of what was there.
        previous = replaced.get((kind, number, transformer)) or replaced.get((kind, number))
        options = set_model_options_patch_replace(options, _perturbing(previous, perturbed_index), "attn1", kind,
                                                  number, transformer)
    return options


def _perturbing(previous, perturbed_index: int):
    def attn1(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        chunks = extra_options["cond_or_uncond"]
        rows = q.shape[0] // len(chunks)
        pieces, start = [], 0
        # Runs of consecutive chunks are contiguous rows: slice them (views), never gather.
        for perturbed, run in itertools.groupby(chunks, key=lambda index: index == perturbed_index):
            run = list(run)
            part = slice(start, start + len(run) * rows)
            start = part.stop
            pieces.append(identity_attention(v[part]) if perturbed else _attention(
                previous, q[part], k[part], v[part], extra_options | {"cond_or_uncond": run}))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    return attn1


def _attention(previous, q, k, v, extra_options):
    if previous is not None:
        return previous(q, k, v, extra_options)
    return attention.optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get(
        "attn_precision"), transformer_options=extra_options)
