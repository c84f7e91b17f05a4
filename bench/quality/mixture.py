"""A class-conditional Gaussian mixture whose exact denoiser is closed form (pure torch, no ComfyUI).

Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (arXiv 2206.00364), eq. 3: the
ideal denoiser is the posterior mean E[x0 | x]. For x = a·x0 + σ·n with x0 ~ Σ_j π_j N(μ_j, diag v_j) it is

    D(x) = Σ_j r_j(x) · (μ_j + a·v_j / (a²·v_j + σ²) · (x − a·μ_j)),   r_j ∝ π_j · N(x; a·μ_j, a²·v_j + σ²),

with a = 1 for variance-exploding (EPS) models and a = 1 − σ for rectified flow (CONST). A class-conditional model
keeps only the components of the requested class; the empty conditioning is the whole mixture, as condition dropout
trains it (Ho & Salimans, arXiv 2207.12598). Everything is computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LATENT_SHAPE = (4, 4, 4)  # channels, height, width: d = 64


@dataclass(frozen=True)
class Mixture:
    """Components j = 0..J-1: `means` [J, d], diagonal `variances` [J, d], `log_weights` [J] (normalised over the
    whole mixture), `classes` [J] (the class each component belongs to). `plane` [d, 2] is an orthonormal basis of
    the plane the class structure lives in (for 2-D pictures)."""

    means: torch.Tensor
    variances: torch.Tensor
    log_weights: torch.Tensor
    classes: torch.Tensor
    plane: torch.Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_classes(self) -> int:
        return int(self.classes.max()) + 1

    def class_log_weights(self, class_weights: torch.Tensor) -> torch.Tensor:
        """Per-row component log weights [B, J] for per-row class weights [B, K] (≥ 0): component j gets
        π_j·w[class j], renormalised. An all-zero row is the empty conditioning: the whole mixture."""
        w = class_weights.to(torch.float64).clamp_min(0)
        w = torch.where(w.sum(-1, keepdim=True) > 0, w, torch.ones_like(w))
        logits = self.log_weights + torch.log(w[:, self.classes])
        return logits - torch.logsumexp(logits, -1, keepdim=True)

    def component_log_densities(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0,
                                alpha: torch.Tensor | float = 1.0) -> torch.Tensor:
        """log N(x; a·μ_j, a²·v_j + σ²) for every row of x [B, d] and component j: [B, J] (without the weights)."""
        x = x.reshape(x.shape[0], -1).to(torch.float64)
        out = x.new_empty(x.shape[0], self.means.shape[0])
        for rows, s, a in _levels(sigma, alpha, x):  # one level per call in sampling: matrix products, no [B, J, d]
            precision = 1 / (a**2 * self.variances + s**2)  # [J, d]
            xr = x[rows]
            quadratic = (xr**2) @ precision.T - 2 * a * xr @ (self.means * precision).T \
                + (a**2 * self.means**2 * precision).sum(-1)
            out[rows] = -0.5 * (quadratic - torch.log(precision / (2 * math.pi)).sum(-1))
        return out

    def responsibilities(self, x: torch.Tensor, class_weights: torch.Tensor | None = None,
                         sigma: torch.Tensor | float = 0.0, alpha: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Posterior component probabilities [B, J] of x (under the class weights; None: the whole mixture)."""
        logits = self._log_prior(x, class_weights) + self.component_log_densities(x, sigma, alpha)
        return torch.softmax(logits, -1)

    def class_log_densities(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x | class k) of clean samples x [B, d]: [B, K]."""
        joint = self.log_weights + self.component_log_densities(x)
        one_hot = torch.nn.functional.one_hot(self.classes, self.num_classes).to(torch.float64)
        per_class = torch.logsumexp(joint[:, :, None] + torch.log(one_hot), 1)  # log Σ_{j in k} π_j N_j
        return per_class - torch.logsumexp(self.log_weights[:, None] + torch.log(one_hot), 0)

    def most_likely_class(self, x: torch.Tensor) -> torch.Tensor:
        """The class of each sample's most likely component (weights included): [B] (precision's criterion)."""
        joint = self.log_weights + self.component_log_densities(x)
        return self.classes[joint.argmax(-1)]

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, class_weights: torch.Tensor | None = None,
                alpha: torch.Tensor | float = 1.0) -> torch.Tensor:
        """The exact E[x0 | x] for x = α·x0 + σ·n, rows [B, d] (or [B, ...]: the shape is kept), float64."""
        shape = x.shape
        flat = x.reshape(shape[0], -1).to(torch.float64)
        r = self.responsibilities(flat, class_weights, sigma, alpha)
        out = torch.empty_like(flat)
        for rows, s, a in _levels(sigma, alpha, flat):
            gain = a * self.variances / (a**2 * self.variances + s**2)  # [J, d]
            # Σ_j r_j (μ_j + g_j (x − a μ_j)) = r @ (μ (1 − a g)) + x ⊙ (r @ g)
            out[rows] = r[rows] @ (self.means * (1 - a * gain)) + flat[rows] * (r[rows] @ gain)
        return out.reshape(shape)

    def moments(self, class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean [d] and covariance [d, d] of the (class-)conditional distribution (one row of weights)."""
        w = self._log_prior(self.means[:1], class_weights)[0].exp()
        mean = w @ self.means
        outer = self.means[:, :, None] * self.means[:, None, :]
        second = (w[:, None, None] * (torch.diag_embed(self.variances) + outer)).sum(0)
        return mean, second - mean[:, None] * mean[None, :]

    def sample(self, n: int, class_weights: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
        """n exact samples [n, d] (float64) of the class-conditional mixture (None: the whole mixture)."""
        generator = torch.Generator().manual_seed(seed)
        w = self._log_prior(torch.zeros(n, self.dim, dtype=torch.float64), class_weights).exp()
        j = torch.multinomial(w.to(torch.float32), 1, generator=generator)[:, 0]
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[j] + self.variances[j].sqrt() * noise

    def _log_prior(self, x: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
        if class_weights is None:
            return self.log_weights.expand(x.shape[0], -1)
        class_weights = class_weights.reshape(-1, class_weights.shape[-1])
        return self.class_log_weights(class_weights.expand(x.shape[0], -1))


def one_hot(classes: list[int] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class weights [B, K] selecting one class per row."""
    return torch.nn.functional.one_hot(torch.as_tensor(classes), num_classes).to(torch.float64)


def default_mixture(num_classes: int = 3, per_class: int = 3, dim: int = math.prod(LATENT_SHAPE),
                    seed: int = 0, radius: float = 1.6, spread: float = 1.0) -> Mixture:
    """The lab's mixture: class centres on a circle (`radius`) in a random plane of R^d, each class a few
    components scattered around its centre (`spread`); all components share one diagonal covariance (standard
    deviations 0.5–0.9), so classes differ only by their means, inside the plane, and overlap: about one exact
    class sample in six lies nearer another class's component, so guidance has something to do. The total
    standard deviation is near 1, like a scaled SD latent."""
    generator = torch.Generator().manual_seed(seed)
    plane, _ = torch.linalg.qr(torch.randn(dim, 2, generator=generator, dtype=torch.float64))
    means, classes = [], []
    for k in range(num_classes):
        angle = 2 * math.pi * k / num_classes
        centre = radius * torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
        for _ in range(per_class):
            angle = 2 * math.pi * torch.rand((), generator=generator, dtype=torch.float64)
            means.append(plane @ (centre + spread * torch.stack([torch.cos(angle), torch.sin(angle)])))
            classes.append(k)
    stds = 0.5 + 0.4 * torch.rand(dim, generator=generator, dtype=torch.float64)
    weights = 0.5 + torch.rand(len(means), generator=generator, dtype=torch.float64)
    return Mixture(torch.stack(means), (stds**2).expand(len(means), dim).clone(), torch.log(weights / weights.sum()),
                   torch.tensor(classes), plane)


def _levels(sigma: torch.Tensor | float, alpha: torch.Tensor | float, x: torch.Tensor):
    """(row mask, σ, α) for each distinct noise level among the rows of x (float64 scalars)."""
    levels = torch.cat([_column(sigma, x), _column(alpha, x)], 1)
    unique, inverse = levels.unique(dim=0, return_inverse=True)
    for index, (s, a) in enumerate(unique):
        yield inverse == index, s, a


def _column(value: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A per-row scalar as a [B, 1] float64 column (a float or a tensor of 1 or B elements)."""
    t = torch.as_tensor(value, dtype=torch.float64, device=x.device).reshape(-1, 1)
    return t.expand(x.shape[0], 1)
