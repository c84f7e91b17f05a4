"""Sample-quality metrics against the exact mixture (pure torch + scipy).

- precision: share of samples whose most likely mixture component belongs to the requested class (the criterion of
  Kynkäänniemi et al., arXiv 1904.06991, made exact: the true density replaces the k-NN manifold estimate);
- Fréchet distance (Heusel et al., arXiv 1706.08500) between the samples' mean/covariance and the exact
  conditional's (closed form, so only the samples carry estimation noise);
- sliced Wasserstein-2 (Rabin et al. 2011; Bonneel et al. 2015) to an equal number of exact samples, over random
  directions in the plane of the component means (where the mixture is multi-modal; across the other 62 dimensions
  it is one Gaussian, which the Fréchet distance covers, and uniform directions in R^64 would dilute the modes
  2:64): it sees mode dropping and mass moved between components, which two moments cannot;
- likelihood gap: mean −log p(x | k) of the samples minus that of exact samples (> 0: off the data manifold).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from .mixture import Mixture, one_hot


def precision(mixture: Mixture, x: torch.Tensor, classes: torch.Tensor) -> float:
    return float((mixture.most_likely_class(x) == classes).double().mean())


def frechet_distance(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """‖μ_x − μ‖² + tr(Σ_x + Σ − 2(Σ_x^½ Σ Σ_x^½)^½) of samples x [n, d] to a Gaussian (mean, cov)."""
    x = x.to(torch.float64)
    sample_mean, sample_cov = x.mean(0), torch.cov(x.T)
    root = scipy.linalg.sqrtm(sample_cov.numpy())
    cross = scipy.linalg.sqrtm(root @ cov.numpy() @ root)
    trace = np.trace(sample_cov.numpy()) + np.trace(cov.numpy()) - 2 * np.trace(np.real(cross))
    return float(((sample_mean - mean) ** 2).sum()) + float(trace)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, projections: int = 256, seed: int = 0,
                       basis: torch.Tensor | None = None) -> float:
    """√(mean over random unit directions θ of W2²(θ·x, θ·y)), for equal sample counts [n, d] each; θ uniform
    in R^d, or in the span of `basis` [d, m] (orthonormal columns)."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.eye(x.shape[1], dtype=torch.float64) if basis is None else basis.to(torch.float64)
    theta = basis @ torch.randn(basis.shape[1], projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = (x.to(torch.float64) @ theta).sort(0)
    py, _ = (y.to(torch.float64) @ theta).sort(0)
    return float(((px - py) ** 2).mean().sqrt())


def class_metrics(mixture: Mixture, x: torch.Tensor, classes: torch.Tensor, seed: int) -> dict[str, float]:
    """Precision over all samples; Fréchet distance, sliced Wasserstein and likelihood gap per requested class,
    averaged over the classes (each class against its own exact conditional)."""
    fd, sw, gap = [], [], []
    for k in classes.unique().tolist():
        rows = x[classes == k]
        weights = one_hot([k], mixture.num_classes)
        mean, cov = mixture.moments(weights)
        exact = mixture.sample(rows.shape[0], weights, seed=10_000 + 97 * seed + k)
        fd.append(frechet_distance(rows, mean, cov))
        sw.append(sliced_wasserstein(rows, exact, seed=seed, basis=mixture.plane))
        log_density = mixture.class_log_densities
        gap.append(float(log_density(exact)[:, k].mean() - log_density(rows)[:, k].mean()))
    return {"precision": precision(mixture, x, classes), "fd": float(np.mean(fd)), "sw": float(np.mean(sw)),
            "nll_gap": float(np.mean(gap))}
