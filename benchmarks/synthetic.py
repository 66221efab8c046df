"""Synthetic unit vectors for the search and scale benchmarks (and their tests)."""

from __future__ import annotations

import numpy as np


def synthetic_vectors(
    n: int,
    dim: int = 1280,
    kind: str = "clustered",
    seed: int = 0,
    cluster_size: int = 50,
    block: int = 65536,
) -> np.ndarray:
    """Synthetic unit vectors for benchmarks.

    * ``uniform``: uniform on the sphere, the worst case for approximate search (no
      structure: every point is about as far from every other).
    * ``clustered``: a mixture of Gaussians on the sphere, closer to CNN descriptors: a
      shared mean direction, cluster centres and per-image noise drawn with a decaying
      spectrum (variance of coordinate ``i`` proportional to ``1 / (i + 1)``), weighted so
      that the mean cosine between images (about 0.4) and the nearest-neighbour cosine
      (about 0.75) resemble efficientnet_lite0 descriptors of the demo collection.
      ``cluster_size`` images per cluster on average.

    Returns:
        ``float32`` ``(n, dim)`` with unit-norm rows.
    """
    if kind not in ("uniform", "clustered"):
        raise ValueError(f"Unknown kind {kind!r}; use 'uniform' or 'clustered'.")
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    if kind == "clustered":
        spec = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
        spec /= np.linalg.norm(spec)
        mu = rng.standard_normal(dim).astype(np.float32)
        mu /= np.linalg.norm(mu)
        n_clusters = max(1, n // max(1, cluster_size))
        centres = rng.standard_normal((n_clusters, dim), dtype=np.float32) * spec
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        labels = rng.integers(0, n_clusters, size=n)
    for a in range(0, n, block):
        b = min(n, a + block)
        g = rng.standard_normal((b - a, dim), dtype=np.float32)
        if kind == "clustered":
            g *= spec
            g /= np.linalg.norm(g, axis=1, keepdims=True)
            g = 0.62 * mu + 0.62 * centres[labels[a:b]] + 0.48 * g
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        out[a:b] = g
    return out
