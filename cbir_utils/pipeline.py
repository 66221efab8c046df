"""The retrieval pipeline end to end: descriptors, post-processing, verification, evaluation.

One configuration (:class:`PipelineConfig`) says how images become descriptors (input size,
whole image or centre crop, descreening, pooling, mirror, scales) and how the collection is
then ranked (PCA-whitening, αDBA, αQE, re-ranking by local-feature verification with the
collection's verification graph). The notebooks and ``benchmarks/quality.py`` share it:

    config = pipeline.PipelineConfig(image_size=128, pooling="gem", whiten_dim=64, rerank=True)
    desc = pipeline.describe(model, meta, collection.paths, config, cache_dir)
    ranked = pipeline.rank_collection(desc, collection.paths, config)
    evals = pipeline.evaluate_scores(ranked.scores, split)   # {protocol: retrieval.Evaluation}

``evaluate_scores`` returns the same :class:`retrieval.Evaluation` objects as
``retrieval.evaluate_protocols``, so tables, galleries and PR curves work unchanged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from . import descriptors as D
from . import metrics as M
from . import models, retrieval
from . import verify as V
from .data import Preprocess


@dataclass(frozen=True)
class PipelineConfig:
    """One configuration of the retrieval pipeline (defaults: the plain baseline).

    Attributes:
        image_size: Network input side (letterbox: the long side).
        resize: ``letterbox`` (whole image, padded) or ``center_crop`` (the study's).
        grayscale: Gray input.
        descreen: Gaussian blur radius before resizing, thousandths of the long side.
        pooling: ``avg``, ``gem`` or ``max``.
        mirror: Mirror-invariant descriptor (image and mirror summed).
        scales: Input sizes relative to ``image_size``, descriptors summed.
        whiten_dim: PCA-whitening learned on the collection, dimensions kept (0 = off).
        dba_k: αDBA neighbours (0 = off).
        qe_k: αQE neighbours (0 = off).
        rerank: Re-rank each query's ``rerank_top_n`` best by local-feature verification.
        rerank_top_n: Candidates verified per query.
        rerank_weight: Score added at full verification evidence.
        graph: Also use the collection's verification graph (two-hop verified printings
            get ``hop_weight``); needs ``rerank``.
        hop_weight: Score added for a two-hop verification.
    """

    image_size: int = 224
    resize: str = "letterbox"
    grayscale: bool = True
    descreen: float = 0.0
    pooling: str = "avg"
    mirror: bool = False
    scales: tuple[float, ...] = (1.0,)
    whiten_dim: int = 0
    dba_k: int = 0
    qe_k: int = 0
    rerank: bool = False
    rerank_top_n: int = 50
    rerank_weight: float = 1.0
    graph: bool = False
    hop_weight: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if self.graph and not self.rerank:
            raise ValueError("graph=True needs rerank=True (the graph is made of verifications).")
        for name in ("whiten_dim", "dba_k", "qe_k", "rerank_top_n"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}.")
        D.scaled_sizes(self.image_size, self.scales)  # validates the scales

    def preprocess(self, backbone: str) -> Preprocess:
        """The preprocessing at scale 1 (normalisation of ``backbone``)."""
        return models.preprocess_for(
            backbone, self.image_size, self.resize, self.grayscale, self.descreen
        )

    def post(self) -> D.PostProcess:
        """The descriptor post-processing."""
        return D.PostProcess(
            whiten=self.whiten_dim > 0,
            whiten_dim=self.whiten_dim or None,
            dba_k=self.dba_k,
            qe_k=self.qe_k,
        )

    def to_dict(self) -> dict:
        """JSON-serialisable."""
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d


PARAM_FIELDS: dict[str, str] = {
    "IMAGE_SIZE": "image_size",
    "RESIZE": "resize",
    "GRAYSCALE": "grayscale",
    "DESCREEN": "descreen",
    "POOLING": "pooling",
    "MIRROR": "mirror",
    "SCALES": "scales",
    "WHITEN_DIM": "whiten_dim",
    "DBA_K": "dba_k",
    "QE_K": "qe_k",
    "RERANK": "rerank",
    "RERANK_TOP_N": "rerank_top_n",
    "GRAPH": "graph",
}
"""Notebook parameter -> :class:`PipelineConfig` field."""

_FROM_META = ("image_size", "resize", "grayscale", "pooling")


def config_from_params(params: dict, meta: dict | None = None) -> PipelineConfig:
    """The pipeline configuration of a notebook's parameters (:data:`PARAM_FIELDS`).

    Args:
        params: The notebook's checked parameters; names it lacks keep their default.
        meta: A fine-tuned checkpoint's meta: its input size, resize, grayscale and pooling
            are the network's and override ``params`` (descreening, scales and the
            post-processing stay the notebook's: they may differ from fine-tuning's).

    Raises:
        ValueError: An inconsistent combination (e.g. ``GRAPH`` without ``RERANK``).
    """
    kwargs = {f: params[name] for name, f in PARAM_FIELDS.items() if name in params}
    if meta is not None:
        kwargs.update({f: meta[f] for f in _FROM_META if f in meta})
    if "scales" in kwargs:
        kwargs["scales"] = tuple(kwargs["scales"])
    return PipelineConfig(**kwargs)


def describe(
    model: models.RetrievalNet,
    meta: dict,
    paths: Sequence[str | os.PathLike],
    config: PipelineConfig,
    cache_dir: str | os.PathLike | None = None,
    **kwargs,
) -> np.ndarray:
    """Descriptors of ``paths`` as ``config`` says (sizes, mirror), cached when ``cache_dir``.

    Args:
        model: The network (its pooling must be ``config.pooling``).
        meta: Its meta (:func:`models.model_meta` or a checkpoint's); the cache key.
        paths: Image files.
        config: The configuration.
        cache_dir: Descriptor cache folder, or None.
        **kwargs: Passed to the extraction (``batch_size``, ``num_workers``, ``progress``...).
    """
    pre = config.preprocess(meta.get("backbone", "efficientnet_lite0"))
    meta = {
        **meta,
        "image_size": config.image_size,
        "resize": config.resize,
        "grayscale": config.grayscale,
        "descreen": config.descreen,
    }
    return D.extract_multiscale(
        model,
        paths,
        pre,
        config.scales,
        cache_dir,
        meta if cache_dir is not None else None,
        mirror=config.mirror,
        **kwargs,
    )


@dataclass
class RankedCollection:
    """The collection ranked against itself.

    Attributes:
        scores: ``(N, N)`` final scores (cosine after post-processing, plus verification
            bonuses); the diagonal is the query itself (mask it out).
        cosine: ``(N, N)`` scores before re-ranking.
        descriptors: ``(N, d)`` post-processed unit-norm descriptors (whitened, αDBA):
            their dot products are ``cosine`` when αQE is off (e.g. for duplicate groups).
        inliers: ``(N, N)`` inlier counts of the verified pairs (``-1`` elsewhere), or None.
        graph: The verification graph, or None.
        whitening: The whitening learned on the collection, or None.
        seconds: Time of each stage (``post``, ``rerank``).
    """

    scores: np.ndarray
    cosine: np.ndarray
    descriptors: np.ndarray | None = None
    inliers: np.ndarray | None = None
    graph: V.VerificationGraph | None = None
    whitening: D.Whitening | None = None
    seconds: dict = field(default_factory=dict)


def rank_collection(
    desc: np.ndarray,
    paths: Sequence[str | os.PathLike],
    config: PipelineConfig,
    store: V.LocalFeatureStore | None = None,
    progress: bool = True,
) -> RankedCollection:
    """Score every image of the collection against every other, as ``config`` says.

    Post-processing (whitening learned on ``desc``, αDBA, αQE) gives the cosine scores; with
    ``rerank`` each image's ``rerank_top_n`` best are verified by local features and get
    ``rerank_weight * inlier_bonus``; with ``graph`` the verifications form the collection's
    graph and two-hop printings get ``hop_weight`` (each query's own edges ignored, as for
    a new query).

    Args:
        desc: ``(N, D)`` unit-norm descriptors of ``paths``.
        paths: The images.
        config: The configuration.
        store: Local features (computed once); default a new one.
        progress: Progress bars.
    """
    desc = np.asarray(desc, dtype=np.float32)
    n = len(paths)
    if desc.shape[0] != n:
        raise ValueError(f"{desc.shape[0]} descriptors for {n} images.")
    t0 = time.perf_counter()
    post = config.post()
    whitening = D.fit_whitening(desc, post.whiten_dim) if post.whiten else None
    S = D.score_matrix(desc, None, post, whitening).astype(np.float64)
    db = whitening.apply(desc) if whitening is not None else D.l2n(desc)
    if post.dba_k:
        db = D.database_augmentation(db, post.dba_k, post.dba_alpha)
    out = RankedCollection(S.copy(), S, descriptors=db, whitening=whitening)
    out.seconds["post"] = time.perf_counter() - t0
    if not config.rerank:
        return out
    t0 = time.perf_counter()
    idx = np.arange(n)
    mask = retrieval.self_mask(idx, n)
    store = store if store is not None else V.LocalFeatureStore()
    new, inl, _ = V.rerank_matrix(
        S,
        paths,
        idx,
        mask,
        top_n=config.rerank_top_n,
        weight=config.rerank_weight,
        store=store,
        progress=progress,
    )
    out.inliers = inl
    if config.graph:
        graph = V.graph_from_inliers(inl)
        for i in range(n):
            hops = graph.two_hop(inl[i] >= graph.edge_inliers, exclude=i)
            new[i, hops] += config.hop_weight
        out.graph = graph
    out.scores = np.where(mask, new, S)
    out.seconds["rerank"] = time.perf_counter() - t0
    return out


def evaluate_scores(
    scores: np.ndarray,
    split: pd.DataFrame,
    protocols: Sequence[str] = ("all", "study", "disjoint"),
    ks: Sequence[int] = (1, 5, 10),
    threshold: float | None = None,
) -> dict[str, retrieval.Evaluation]:
    """Like :func:`retrieval.evaluate_protocols`, from a full ``(N, N)`` score matrix.

    The pairwise threshold is chosen on the ``val`` queries unless ``threshold`` is given;
    each query's own column is masked out.
    """
    scores = np.asarray(scores, dtype=np.float64)
    scenes = split["scene"].to_numpy(dtype=object)
    n = len(scenes)
    if scores.shape != (n, n):
        raise ValueError(f"scores must be ({n}, {n}) for this split, got {scores.shape}.")
    if threshold is None:
        val = retrieval.protocol_queries(split, "val")
        if not len(val):
            raise ValueError("No validation queries to choose a threshold on.")
        rel = retrieval.relevance(scenes[val], scenes)
        threshold = M.best_threshold(scores[val], rel, retrieval.self_mask(val, n))
    out = {}
    for p in protocols:
        q = retrieval.protocol_queries(split, p)
        if not len(q):
            continue
        S, mask = scores[q], retrieval.self_mask(q, n)
        rel = retrieval.relevance(scenes[q], scenes)
        out[p] = retrieval.Evaluation(
            protocol=p,
            ranking=M.retrieval_metrics(S, rel, mask=mask, ks=tuple(ks)),
            pairwise=M.pairwise_prf(S, rel, float(threshold), mask=mask),
            pr_curve=M.pr_curve(S, rel, mask=mask),
            scores=S,
            mask=mask,
            query_idx=q,
        )
    return out
