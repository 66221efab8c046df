"""Post-processing of global descriptors: multi-scale, PCA-whitening, query expansion.

The standard recipe of CNN image retrieval (Radenović, Tolias and Chum): descriptors at
several input sizes summed (:func:`extract_multiscale`), a PCA-whitening learned without
labels on the collection (:func:`fit_whitening`), and αQE / αDBA (:func:`neighbour_mean`:
a descriptor replaced by the mean of itself and its neighbours weighted ``cos ** alpha``).
Pure functions: arrays in, new arrays out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from cbir_utils.config import PipelineConfig
from cbir_utils.engine import features
from cbir_utils.engine.search import exact_search
from cbir_utils.errors import InputError
from cbir_utils.sources.data import Preprocess


def l2n(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation (``float32``)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def _check_desc(x: np.ndarray, name: str = "descriptors") -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or not len(x):
        raise InputError(f"{name} must be a non-empty (N, D) array, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values.")
    return x


# --------------------------------------------------------------------------- multi-scale


def scaled_sizes(image_size: int, scales: Sequence[float]) -> list[int]:
    """Input sizes of a multi-scale extraction (each at least 32 px, duplicates removed)."""
    if not scales or any(s <= 0 for s in scales):
        raise InputError(f"scales must be positive numbers, got {scales!r}.")
    out: list[int] = []
    for s in scales:
        size = max(32, round(image_size * float(s)))
        if size not in out:
            out.append(size)
    return out


def extract_multiscale(
    model,
    paths: Sequence[str | os.PathLike],
    preprocess: Preprocess,
    scales: Sequence[float] = (1.0,),
    cache_dir: str | os.PathLike | None = None,
    model_meta: dict | None = None,
    **kwargs,
) -> np.ndarray:
    """Descriptors at several input sizes (``scales`` of ``preprocess.image_size``), summed and
    L2-normalised; each image decoded, cut, grayed and descreened once for all scales.

    ``paths`` may be decoded images (with ``keys=`` their files' digests when cached). With
    ``cache_dir`` and ``model_meta`` each scale has its cache.
    """

    stats = kwargs.pop("stats", None)
    keys = kwargs.pop("keys", None)  # the files' digests, when known (images may be decoded)
    pres = [replace(preprocess, image_size=s) for s in scaled_sizes(preprocess.image_size, scales)]
    sizes = features.Sizes(pres) if len(pres) > 1 else pres[0]  # decoded once for all sizes
    if cache_dir is not None:
        if model_meta is None:
            raise InputError("model_meta is needed to cache descriptors (cache_dir given).")
        meta = {**model_meta, "image_size": pres[0].image_size} if len(pres) == 1 else model_meta
        v = features.extract_cached(
            model, paths, sizes, cache_dir, meta, stats=stats, keys=keys, **kwargs
        )
    else:
        v = features.extract(model, paths, sizes, **kwargs)
        if stats is not None:
            stats.computed += len(paths)
    total = sum(np.asarray(x, dtype=np.float32) for x in (v if len(pres) > 1 else [v]))
    return l2n(total)


# --------------------------------------------------------------------------- whitening


@dataclass
class Whitening:
    """A learned PCA-whitening ``l2n((x - mean) @ projection)``; ``power`` 0.5 whitens fully, 0
    only rotates.
    """

    mean: np.ndarray
    projection: np.ndarray
    eigenvalues: np.ndarray
    power: float

    @property
    def dim(self) -> int:
        """Output dimension."""
        return int(self.projection.shape[1])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Whiten descriptors ``(N, D)`` to unit-norm ``(N, d)``."""
        x = _check_desc(x)
        if x.shape[1] != len(self.mean):
            raise InputError(
                f"Descriptors have dimension {x.shape[1]}, the whitening expects {len(self.mean)}."
            )
        return l2n((x - self.mean) @ self.projection)

    __call__ = apply

    def to_dict(self) -> dict:
        """The arrays by name (for ``np.savez``)."""
        return {
            "mean": self.mean,
            "projection": self.projection,
            "eigenvalues": self.eigenvalues,
            "power": np.float32(self.power),
        }


def fit_whitening(
    x: np.ndarray, dim: int | None = None, power: float = 0.5, shrinkage: float = 0.1
) -> Whitening:
    """Learn a PCA-whitening on descriptors ``x``, without labels.

    ``dim`` is capped at ``N - 1``, and the eigenvalues are shrunk towards their mean
    (``(1 - shrinkage) λ + shrinkage mean(λ)``) so that a small collection's noise directions
    are not blown up.
    """
    x = _check_desc(x)
    if len(x) < 2:
        raise InputError("Need at least 2 descriptors to learn a whitening.")
    if not 0.0 <= shrinkage <= 1.0:
        raise InputError(f"shrinkage must be in [0, 1], got {shrinkage!r}.")
    if power < 0:
        raise InputError(f"power must be >= 0, got {power!r}.")
    n, d_in = x.shape
    max_dim = min(d_in, n - 1)
    if dim is None:
        dim = max_dim
    if int(dim) < 1:
        raise InputError(f"dim must be a positive integer, got {dim!r}.")
    dim = min(int(dim), max_dim)
    mean = x.mean(axis=0, dtype=np.float64)
    xc = (x - mean).astype(np.float64)
    # SVD of the centred data: right singular vectors = covariance eigenvectors
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    eig = (s**2) / max(n - 1, 1)
    eig_kept = eig[:dim]
    reg = (1.0 - shrinkage) * eig_kept + shrinkage * eig_kept.mean()
    reg = np.maximum(reg, 1e-12)
    proj = vt[:dim].T / reg**power
    return Whitening(
        mean=mean.astype(np.float32),
        projection=proj.astype(np.float32),
        eigenvalues=eig_kept.astype(np.float32),
        power=float(power),
    )


# --------------------------------------------------------------------------- query expansion


def neighbour_mean(
    x: np.ndarray,
    db: np.ndarray,
    k: int,
    alpha: float,
    exclude: np.ndarray | None = None,
    searcher=None,
) -> np.ndarray:
    """Each row of ``x`` plus its ``k`` nearest rows of ``db``, weighted ``cos ** alpha``, found
    by chunked exact search or ``searcher``; ``exclude``: per row, a ``db`` row left out.
    """

    if k < 0:
        raise InputError(f"k must be >= 0, got {k!r}.")
    if alpha < 0:
        raise InputError(f"alpha must be >= 0, got {alpha!r}.")
    if k == 0:
        return l2n(x)
    nb = searcher.search(x, k, exclude) if searcher is not None else exact_search(x, db, k, exclude)
    idx, sims = nb.indices, nb.scores.astype(np.float32)
    ok = idx >= 0
    w = np.where(ok, np.clip(sims, 0.0, None), 0.0) ** alpha
    w = np.where(ok, w, 0.0)
    return l2n(x + np.einsum("nk,nkd->nd", w, db[np.where(ok, idx, 0)]))


# --------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class PostProcess:
    """Which post-processing the pipeline applies (all off by default): the whitening, αQE and
    αDBA (``k`` neighbours, 0 off).
    """

    whiten: bool = False
    whiten_dim: int | None = None
    whiten_shrinkage: float = PipelineConfig.whiten_shrinkage
    qe_k: int = 0
    qe_alpha: float = 3.0
    dba_k: int = 0
    dba_alpha: float = 3.0
