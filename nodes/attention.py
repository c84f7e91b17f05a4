"""The perturbed branch of PAG inside a batched model call: identity self-attention on the perturbed rows only.

UNet blocks: an attn1 replace patch. MMDiT joint blocks (their attention is not an attn1): a "dit" double_block
replace that runs the block with an attention override, which perturbs the image queries of the perturbed rows.
"""

from __future__ import annotations

import itertools

import comfy.ldm.modules.attention as attention
import torch
from comfy.model_patcher import set_model_options_patch_replace

from ..guiders.pag import Block, identity_attention, perturb_image_queries


def with_perturbed_attention(model_options: dict, blocks: tuple[Block, ...], perturbed_index: int) -> dict:
    """A per-call copy of model_options whose chosen self-attentions are the identity for the perturbed rows only.

    ComfyUI batches the entries of one call in chunks of equal rows and lists their entry indices in
    `cond_or_uncond`; the rows of the chunk(s) with `perturbed_index` get identity attention, all others run the
    attention that was there before (another pack's replacement, or ComfyUI's own).
    """
    options = model_options.copy()
    replaced = model_options.get("transformer_options", {}).get("patches_replace", {})
    for kind, number, transformer in blocks:
        if kind == "joint":
            previous = replaced.get("dit", {}).get(("double_block", number))
            options = set_model_options_patch_replace(options, _perturbing_joint(previous, perturbed_index), "dit",
                                                      "double_block", number)
            continue
        # ComfyUI tries (kind, number, transformer) first, then (kind, number): so does the lookup of what was there.
        attn1 = replaced.get("attn1", {})
        previous = attn1.get((kind, number, transformer)) or attn1.get((kind, number))
        options = set_model_options_patch_replace(options, _perturbing(previous, perturbed_index), "attn1", kind,
                                                  number, transformer)
    return options


def _runs(chunks: list[int], rows: int, perturbed_index: int):
    """(is perturbed, row slice, chunk indices) for each run of consecutive chunks: contiguous rows, so views."""
    start = 0
    for perturbed, run in itertools.groupby(chunks, key=lambda index: index == perturbed_index):
        run = list(run)
        yield perturbed, slice(start, start + len(run) * rows), run
        start += len(run) * rows


def _perturbing(previous, perturbed_index: int):
    def attn1(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        chunks = extra_options["cond_or_uncond"]
        pieces = [identity_attention(v[part]) if perturbed else _attention(
                  previous, q[part], k[part], v[part], extra_options | {"cond_or_uncond": run})
                  for perturbed, part, run in _runs(chunks, q.shape[0] // len(chunks), perturbed_index)]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    return attn1


def _perturbing_joint(previous, perturbed_index: int):
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
            pieces = [perturb_image_queries(out[part], v[part], image_tokens) if perturbed else out[part]
                      for perturbed, part, _ in _runs(chunks, q.shape[0] // len(chunks), perturbed_index)]
            return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

        args = args | {"transformer_options": options | {"optimized_attention_override": attention_override}}
        return previous(args, extra) if previous else extra["original_block"](args)

    return double_block

def _attention(previous, q, k, v, extra_options):
    if previous is not None:
        return previous(q, k, v, extra_options)
    return attention.optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get(
        "attn_precision"), transformer_options=extra_options)
