"""The perturbed branch of PAG inside a batched model call: identity self-attention on the perturbed rows only.

UNet blocks: an attn1 replace patch. MMDiT joint blocks (their attention is not an attn1): a "dit" double_block
replace that runs the block with an attention override, which perturbs the image queries of the perturbed rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import comfy.ldm.modules.attention as attention
import torch
from comfy.model_patcher import set_model_options_patch_replace

from ..guiders.pag import Block, identity_attention, perturb_image_queries


def with_perturbed_attention(model_options: dict, perturbations: Sequence[tuple[tuple[Block, ...], int]]) -> dict:
    """A per-call copy of model_options whose chosen self-attentions are the identity for the perturbed rows only.

    `perturbations` pairs each PAG patch's blocks with the entry index of its perturbed cond in the call. ComfyUI
    batches the entries of one call in chunks of equal rows and lists their entry indices in `cond_or_uncond`; at each
    block the rows of the entries perturbed there get identity attention, all others run the attention that was
    there before (another pack's replacement, or ComfyUI's own). UNet blocks are patched per transformer
    (kind, number, index): ComfyUI looks that key up before (kind, number), so Steer's patch holds whatever keys
    other nodes used (core's SelfAttentionGuidance sets ("middle", 0, 0)), and each key chains what it replaces.
    """
    options = model_options.copy()
    replaced = model_options.get("transformer_options", {}).get("patches_replace", {})
    at_block: dict[Block, set[int]] = {}
    for blocks, index in perturbations:
        for block in blocks:
            at_block.setdefault(block, set()).add(index)
    for (kind, number, transformer), indices in at_block.items():
        if kind == "joint":
            previous = replaced.get("dit", {}).get(("double_block", number))
            options = set_model_options_patch_replace(options, _perturbing_joint(previous, frozenset(indices)), "dit",
                                                      "double_block", number)
            continue
        # ComfyUI tries (kind, number, transformer) first, then (kind, number): so does the lookup of what was there.
        attn1 = replaced.get("attn1", {})
        previous = attn1.get((kind, number, transformer)) or attn1.get((kind, number))
        options = set_model_options_patch_replace(options, _perturbing(previous, frozenset(indices)), "attn1", kind,
                                                  number, transformer)
    return options


def _runs(chunks: list[int], rows: int, perturbed: frozenset[int]):
    """(is perturbed, row slice, chunk indices) for each run of consecutive chunks: contiguous rows, so views."""
    start = 0
    for is_perturbed, run in itertools.groupby(chunks, key=lambda index: index in perturbed):
        run = list(run)
        yield is_perturbed, slice(start, start + len(run) * rows), run
        start += len(run) * rows


def _perturbing(previous, perturbed: frozenset[int]):
    def attn1(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        chunks = extra_options["cond_or_uncond"]
        pieces = [identity_attention(v[part]) if is_perturbed else _attention(
                  previous, q[part], k[part], v[part], extra_options | {"cond_or_uncond": run})
                  for is_perturbed, part, run in _runs(chunks, q.shape[0] // len(chunks), perturbed)]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    return attn1


def _perturbing_joint(previous, perturbed: frozenset[int]):
    def double_block(args: dict, extra: dict) -> dict:
        options = args["transformer_options"]
        chunks, image_tokens = options["cond_or_uncond"], args["img"].shape[1]
        earlier = options.get("optimized_attention_override")

        def attention_override(func, *attention_args, **kwargs):
            out = earlier(func, *attention_args, **kwargs) if earlier else func(*attention_args, **kwargs)
            q, v = attention_args[0], attention_args[2]
            # MMDiT hands over token-major [batch, tokens, heads(, dim)] and gets [batch, tokens, heads·dim] back.
            if kwargs.get("skip_reshape") or kwargs.get("skip_output_reshape") or v.shape[:2] != out.shape[:2]:
                raise RuntimeError("Steer PAG: unexpected attention layout in an MMDiT joint block")
            v = v.reshape(out.shape)
            pieces = [perturb_image_queries(out[part], v[part], image_tokens) if is_perturbed else out[part]
                      for is_perturbed, part, _ in _runs(chunks, q.shape[0] // len(chunks), perturbed)]
            return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

        args = args | {"transformer_options": options | {"optimized_attention_override": attention_override}}
        return previous(args, extra) if previous else extra["original_block"](args)

    return double_block


def _attention(previous, q, k, v, extra_options):
    if previous is not None:
        return previous(q, k, v, extra_options)
    return attention.optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get(
        "attn_precision"), transformer_options=extra_options)
