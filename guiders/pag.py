"""Perturbed-attention guidance — Ahn et al., "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance",
https://arxiv.org/abs/2403.17377 (ECCV 2024).

The cond is run a second time with the self-attention map of chosen layers replaced by the identity
(`attention(q, k, v) = v`), and the guided x0 moves away from that degraded prediction (guiders/perturbation.py).
Defaults: s_p = 3.0 on the SD1.5/SDXL middle block; the paper pairs it with CFG 4.0.

Joint text–image attention (SD3's MMDiT, Flux, Chroma, HunyuanVideo, Qwen-Image, Lumina 2) attends over one sequence
of text and image tokens. There, as in diffusers' `PAGJointAttnProcessor2_0`, the image–image block of the attention
map becomes the identity while each image query still attends to every text token: image query i attends to
{text keys, image key i} only. Text queries attend as usual.
"""

from __future__ import annotations

import torch


def identity_attention(v: torch.Tensor) -> torch.Tensor:
    """The perturbed self-attention: an identity attention map returns the values unchanged."""
    return v


def joint_identity_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, image: slice,
                             key_mask: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
    """Outputs of the image queries `q[..., image, :]` ([batch, heads, tokens, dim]) when each attends to the text
    keys (every token outside `image`) and to its own image key only; `[batch, heads, image tokens, dim]`.

    `key_mask` ([batch or 1, heads or 1, tokens], additive, -inf for a masked key) is the attention's own key
    mask, if any. Computed in chunks of image queries: memory is O(chunk · text tokens), never tokens².
    """
    scale = q.shape[-1] ** -0.5
    text = torch.ones(k.shape[-2], dtype=torch.bool, device=k.device)
    text[image] = False
    k_text, v_text = k[..., text, :].float(), v[..., text, :].float()
    text_mask = None if key_mask is None else key_mask[..., text].float().unsqueeze(-2)
    own_mask = None if key_mask is None else key_mask[..., image].float()
    outputs = []
    q_image, k_image, v_image = q[..., image, :], k[..., image, :], v[..., image, :]
    for start in range(0, q_image.shape[-2], chunk):
        part = slice(start, start + chunk)
        qi = q_image[..., part, :].float()
        text_logits = qi @ k_text.transpose(-1, -2) * scale  # [b, h, chunk, text]
        own_logit = (qi * k_image[..., part, :].float()).sum(-1, keepdim=True) * scale  # [b, h, chunk, 1]
        if text_mask is not None:
            text_logits = text_logits + text_mask
            own_logit = own_logit + own_mask[..., part].unsqueeze(-1)
        weights = torch.softmax(torch.cat((text_logits, own_logit), dim=-1), dim=-1)
        outputs.append(weights[..., :-1] @ v_text + weights[..., -1:] * v_image[..., part, :].float())
    return torch.cat(outputs, dim=-2).to(v.dtype)
