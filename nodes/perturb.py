"""The perturbed branches inside a batched model call: each perturbation acts on its own rows only.

ComfyUI batches the entries of one call in chunks of equal rows and lists their entry indices in `cond_or_uncond`;
each perturbation knows the entry index of its perturbed cond, so at each chosen block the rows of the entries
perturbed there are degraded (math: guiders/pag.py, guiders/seg.py, guiders/skip_layer.py) and all others run what
was there before — another pack's replacement, or ComfyUI's own block.

UNet blocks: an attn1 replace per transformer (kind, number, index): ComfyUI looks that key up before (kind, number),
so Steer's patch holds whatever keys other nodes used (core's SelfAttentionGuidance sets ("middle", 0, 0)) and chains
what it replaces. DiT blocks: a `dit` double/single block replace that runs the block (or the replace that was there)
with an attention override for the PAG / SEG rows, then passes the block's input through for the skip-layer rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import comfy.ldm.modules.attention as attention
import torch
from comfy.model_patcher import set_model_options_patch_replace
from comfy.patcher_extension import WrappersMP

from ..guiders.pag import identity_attention, joint_identity_attention
from ..guiders.perturbation import Block, Perturbation
from ..guiders.seg import blur_queries
from ..guiders.skip_layer import skip_rows
from .architectures import Architecture

TEXT_TOKENS = "steer_text_tokens"  # set by the last double block for single blocks, whose args lack the text


def with_perturbations(model_options: dict, architecture: Architecture, perturbed: Sequence[tuple[Perturbation, int]],
                       latent_shape: tuple[int, ...]) -> dict:
    """A per-call copy of model_options in which each (perturbation, entry index) degrades its blocks for the rows of
    that entry. `latent_shape` is the call's latent without batch and channels (for SEG's token grid)."""
    at_block: dict[Block, dict[int, Perturbation]] = {}
    for perturbation, index in perturbed:
        for block in perturbation.blocks:
            at_block.setdefault(block, {})[index] = perturbation
    options = model_options.copy()
    replaced = model_options.get("transformer_options", {}).get("patches_replace", {})
    grid = architecture.grid(latent_shape)
    if architecture.unet:
        attn1 = replaced.get("attn1", {})
        for (kind, number, transformer), rows in at_block.items():
            # ComfyUI tries (kind, number, transformer) first, then (kind, number): so does this lookup.
            previous = attn1.get((kind, number, transformer)) or attn1.get((kind, number))
            options = set_model_options_patch_replace(options, _unet_attn1(previous, rows, latent_shape[-2:]),
                                                      "attn1", kind, number, transformer)
        return options
    if architecture.counted_from is not None:
        return _counting(options, architecture, at_block, grid)
    dit = replaced.get("dit", {})
    doubles = [number for kind, number in architecture.blocks if kind == "double"]
    observer = ("double", max(doubles), None) if doubles and any(
        kind == "single" and any(p.kind != "skip" for p in rows.values()) for (kind, _, _), rows in at_block.items()) \
        else None
    if observer is not None:
        at_block.setdefault(observer, {})
    for (kind, number, _), rows in at_block.items():
        key = f"{kind}_block"
        options = set_model_options_patch_replace(
            options, _dit_block(dit.get((key, number)), rows, architecture, grid, kind == "single",
                                observe=(kind, number, None) == observer), "dit", key, number)
    return options


def _chunk_rows(chunks: Sequence[int], batch: int) -> list[tuple[int, slice]]:
    """(entry index, its rows) for each chunk of the call."""
    rows = batch // len(chunks)
    return [(index, slice(n * rows, (n + 1) * rows)) for n, index in enumerate(chunks)]


def _unet_attn1(previous, rows: dict[int, Perturbation], latent_hw: tuple[int, ...]):
    def attn1(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        chunks = extra_options["cond_or_uncond"]
        blurring = any(rows.get(i) is not None and rows[i].kind == "seg" for i in chunks)
        if blurring:
            grid = _unet_grid(q.shape[1], extra_options.get("original_shape", (0, 0, *latent_hw))[-2:])
            q = q.clone()
        pieces = []
        for is_pag, run in itertools.groupby(_chunk_rows(chunks, q.shape[0]),
                                             key=lambda chunk: getattr(rows.get(chunk[0]), "kind", None) == "pag"):
            run = list(run)
            part = slice(run[0][1].start, run[-1][1].stop)
            if is_pag:
                pieces.append(identity_attention(v[part]))
                continue
            for index, chunk in run:
                if rows.get(index) is not None and rows[index].kind == "seg":
                    q[chunk] = blur_queries(q[chunk], grid, rows[index].blur_sigma)
            pieces.append(_unet_attention(previous, q[part], k[part], v[part],
                                          extra_options | {"cond_or_uncond": [index for index, _ in run]}))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    return attn1


def _unet_grid(tokens: int, latent_hw: Sequence[int]) -> tuple[int, int]:
    """The (height, width) of a UNet block's tokens: the latent downsampled by a power of two, sides rounded up."""
    height, width = latent_hw
    factor = 1
    while -(-height // factor) * -(-width // factor) > tokens:
        factor *= 2
    if -(-height // factor) * -(-width // factor) != tokens:
        raise RuntimeError(f"Steer SEG: {tokens} attention tokens do not tile a {height}×{width} latent")
    return -(-height // factor), -(-width // factor)


def _unet_attention(previous, q, k, v, extra_options):
    if previous is not None:
        return previous(q, k, v, extra_options)
    return attention.optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get(
        "attn_precision"), transformer_options=extra_options)


def _dit_block(previous, rows: dict[int, Perturbation], architecture: Architecture, grid: tuple[int, ...],
               single: bool, observe: bool):
    attending = {index: p for index, p in rows.items() if p.kind != "skip"}
    skipping = frozenset(index for index, p in rows.items() if p.kind == "skip")

    def block(args: dict, extra: dict) -> dict:
        options = args.get("transformer_options")
        if options is None or "cond_or_uncond" not in options:
            raise RuntimeError(f"Steer: this {architecture.name} model passes no transformer_options to its block "
                               "replaces, so perturbation guidance cannot tell its rows apart")
        if observe:
            options[TEXT_TOKENS] = args["txt"].shape[1]
        chunks = options["cond_or_uncond"]
        call = args
        if any(index in attending for index in chunks):
            image_tokens = _image_tokens(args, options, single)
            override = _attention_override(options.get("optimized_attention_override"), chunks, attending,
                                           architecture, grid, image_tokens)
            call = args | {"transformer_options": options | {"optimized_attention_override": override}}
        skips = any(index in skipping for index in chunks)
        # Blocks may update their inputs in place (Flux's do): keep what the skipped rows pass through.
        inputs = {key: args[key].clone() for key in ("img", "txt") if skips and isinstance(args.get(key), torch.Tensor)}
        out = previous(call, extra) if previous is not None else extra["original_block"](call)
        if not skips:
            return out
        batch = args["img"].shape[0]
        skipped = torch.zeros(batch, dtype=torch.bool)
        for index, part in _chunk_rows(chunks, batch):
            skipped[part] = index in skipping
        return {key: skip_rows(inputs[key], value, skipped)
                if isinstance(value, torch.Tensor) and key in inputs and inputs[key].shape == value.shape else value
                for key, value in out.items()}

    return block


def _image_tokens(args: dict, options: dict, single: bool) -> int:
    """Image tokens in the block's sequence: a double block holds them apart from the text; a single block's `img`
    is the joint sequence, so the text count comes from ComfyUI (`img_slice`, newer versions) or the last double
    block."""
    if not single:
        return args["img"].shape[1]
    if "img_slice" in options:
        start, stop = options["img_slice"]
        return stop - start
    if TEXT_TOKENS not in options:
        raise RuntimeError("Steer: a single block ran before any double block; cannot tell its text from its image")
    return args["img"].shape[1] - options[TEXT_TOKENS]


def _attention_override(earlier: Callable | None, chunks: Sequence[int], rows: dict[int, Perturbation],
                        architecture: Architecture, grid: tuple[int, ...], image_tokens: int):
    """An `optimized_attention_override` for one block call: its first attention (the block's self- or joint
    attention) is perturbed for the rows of `rows`; later ones (Wan's cross-attention) run untouched."""
    calls = itertools.count()

    def override(func, *args, **kwargs):
        if next(calls) != 0:
            return _run(earlier, func, args, kwargs)
        return _perturbed_attention(earlier, func, args, kwargs, chunks, rows, architecture, grid, image_tokens)

    return override


def _counting(options: dict, architecture: Architecture, at_block: dict[Block, dict[int, Perturbation]],
              grid: tuple[int, ...]) -> dict:
    """Per-call options for a model without block hooks: one attention override counts the forward's attention
    calls (reset by a diffusion-model wrapper at each forward) and perturbs those of the chosen blocks. The first
    call (the caption refiner's) tells the caption's length; the image follows it."""
    transformer_options = options.get("transformer_options", {}).copy()
    earlier = transformer_options.get("optimized_attention_override")
    by_call = {architecture.counted_from + number: rows for (_, number, _), rows in at_block.items()}
    state = {"calls": 0, "caption": 0}

    def override(func, *args, **kwargs):
        call, state["calls"] = state["calls"], state["calls"] + 1
        q = args[0]
        length = q.shape[1] if not kwargs.get("skip_reshape", False) else q.shape[2]
        if call == 0:
            state["caption"] = length
        rows = by_call.get(call)
        options = kwargs.get("transformer_options", {})
        if rows is None or not any(index in rows for index in options.get("cond_or_uncond", ())):
            return _run(earlier, func, args, kwargs)
        return _perturbed_attention(earlier, func, args, kwargs, options["cond_or_uncond"], rows, architecture,
                                    grid, length - state["caption"])

    def forward(executor, *args, **kwargs):
        state["calls"] = 0
        return executor(*args, **kwargs)

    wrappers = {kind: dict(entries) for kind, entries in transformer_options.get("wrappers", {}).items()}
    wrappers.setdefault(WrappersMP.DIFFUSION_MODEL, {})["steer_perturbation"] = [forward]
    transformer_options |= {"optimized_attention_override": override, "wrappers": wrappers}
    return options | {"transformer_options": transformer_options}


def _run(earlier: Callable | None, func, args, kwargs):
    return earlier(func, *args, **kwargs) if earlier is not None else func(*args, **kwargs)


def _perturbed_attention(earlier: Callable | None, func, args, kwargs, chunks: Sequence[int],
                         rows: dict[int, Perturbation], architecture: Architecture, grid: tuple[int, ...],
                         image_tokens: int):
    """One attention call with the SEG rows' image queries blurred and the PAG rows' attention the identity."""
    if kwargs.get("skip_output_reshape"):
        raise RuntimeError(f"Steer: unexpected attention layout in a {architecture.name} block")
    q, k, v = args[:3]
    heads = kwargs["heads"] if "heads" in kwargs else args[3]
    token_major = not kwargs.get("skip_reshape", False)  # [B, L, H·D] (or [B, L, H, D]) rather than [B, H, L, D]
    length = q.shape[1] if token_major else q.shape[2]
    image = _image_slice(architecture, length, image_tokens)
    seg = [(part, rows[index]) for index, part in _chunk_rows(chunks, q.shape[0])
           if index in rows and rows[index].kind == "seg"]
    if seg:
        q = q.clone()
        main = _main_image(architecture, image, grid)
        for part, perturbation in seg:
            if token_major:
                q[part, main] = blur_queries(q[part][:, main], grid, perturbation.blur_sigma)
            else:
                q[part, :, main] = blur_queries(q[part][:, :, main], grid, perturbation.blur_sigma)
    out = _run(earlier, func, (q, k, v, *args[3:]), kwargs)
    pag = [part for index, part in _chunk_rows(chunks, q.shape[0]) if index in rows and rows[index].kind == "pag"]
    if not pag:
        return out
    out = out.clone()
    key_mask = _key_mask(kwargs.get("mask", args[4] if len(args) > 4 else None)) if architecture.joint else None
    for part in pag:
        if not architecture.joint:
            out[part] = identity_attention(v[part]).reshape(out[part].shape)
            continue
        qh, kh, vh = (_heads_first(t[part], heads) if token_major else t[part] for t in (q, k, v))
        rows_mask = key_mask[part] if key_mask is not None and key_mask.shape[0] > 1 else key_mask
        out[part, image] = joint_identity_attention(qh, kh, vh, image, rows_mask).transpose(1, 2).reshape(
            out[part, image].shape)
    return out


def _image_slice(architecture: Architecture, length: int, image_tokens: int) -> slice:
    if not architecture.joint:
        return slice(0, length)
    return slice(length - image_tokens, length) if architecture.text_first else slice(0, image_tokens)


def _main_image(architecture: Architecture, image: slice, grid: tuple[int, ...]) -> slice:
    """The main image's tokens within `image` (reference-image tokens, where present, sit before or after them)."""
    count = math.prod(grid)
    available = image.stop - image.start
    if available < count:
        raise RuntimeError(f"Steer SEG: {available} image tokens cannot hold the {'×'.join(map(str, grid))} grid")
    return slice(image.stop - count, image.stop) if architecture.refs_first else slice(image.start, image.start + count)


def _heads_first(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H·D] or [B, L, H, D] → [B, H, L, D]."""
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def _key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The attention's mask as ComfyUI reads it ([Lq, Lk], [B, Lq, Lk] or [B, H, Lq, Lk], boolean keep-mask or
    additive), reduced to the per-key additive mask PAG's image queries need; None when there is none."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, float("-inf"))
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if mask.shape[-2] != 1 and not torch.equal(mask, mask[..., :1, :].expand_as(mask)):
        raise RuntimeError("Steer PAG: this attention's mask differs between queries; only key masks are supported")
    return mask[..., 0, :]
