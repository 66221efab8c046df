"""The retrieval pipeline end to end: descriptors, post-processing, verification.

One :class:`cbir_utils.config.PipelineConfig` says how images become descriptors (size,
resize, descreening, pooling, mirror, scales) and how the collection is ranked
(PCA-whitening, αDBA, αQE, local-feature re-ranking, verification graph)::

    desc = pipeline.describe(model, meta, collection.paths, config, cache_dir)
    ranked = pipeline.rank_collection(desc, collection.paths, config)
    evals = retrieval.evaluate_collection(ranked, split)  # {protocol: Evaluation}
"""

from __future__ import annotations

import copy
import hashlib
import io as _io
import json
import os
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cbir_utils.config import BACKBONE, PipelineConfig
from cbir_utils.engine import descriptors as D
from cbir_utils.engine import models, search
from cbir_utils.engine import verify as V
from cbir_utils.errors import InputError
from cbir_utils.io import atomic_write_bytes, save_json


def preprocessing(config: PipelineConfig, backbone: str):
    """The preprocessing of ``config`` at scale 1 (normalisation of ``backbone``)."""
    return models.preprocess_for(
        backbone,
        config.image_size,
        config.resize,
        config.grayscale,
        config.descreen,
        config.find_photo,
    )


def post_processing(config: PipelineConfig) -> D.PostProcess:
    """The descriptor post-processing of ``config`` (whitening, αDBA, αQE)."""
    return D.PostProcess(
        whiten=config.whitening_dims > 0,
        whiten_dim=config.whitening_dims or None,
        whiten_shrinkage=config.whiten_shrinkage,
        dba_k=config.dba_k,
        qe_k=config.qe_k,
    )


def describe(
    model: models.RetrievalNet,
    meta: dict,
    paths: Sequence[str | os.PathLike],
    config: PipelineConfig,
    cache_dir: str | os.PathLike | None = None,
    **kwargs,
) -> np.ndarray:
    """Descriptors of ``paths`` as ``config`` says (sizes, mirror), cached when ``cache_dir``."""
    pre = preprocessing(config, meta.get("backbone", BACKBONE))
    meta = {
        **meta,
        "image_size": config.image_size,
        "resize": config.resize,
        "grayscale": config.grayscale,
        "descreen": config.descreen,
        **({"find_photo": True} if config.find_photo else {}),
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
class Ranking:
    """Each query's best candidates, best first, ``(Q, K)``: ``indices`` (``-1`` pads), final
    ``scores`` (``-inf`` pads), the post-processed ``cosine``, ``inliers`` (``-1``: not verified).
    """

    indices: np.ndarray
    scores: np.ndarray
    cosine: np.ndarray
    inliers: np.ndarray


def _pad(rows: list[tuple[np.ndarray, ...]], k: int) -> Ranking:
    q = len(rows)
    idx = np.full((q, k), -1, dtype=np.int64)
    sc = np.full((q, k), -np.inf, dtype=np.float64)
    co = np.full((q, k), -np.inf, dtype=np.float64)
    inl = np.full((q, k), -1, dtype=np.int64)
    for r, (i, s, c, n) in enumerate(rows):
        m = min(k, len(i))
        idx[r, :m], sc[r, :m], co[r, :m], inl[r, :m] = i[:m], s[:m], c[:m], n[:m]
    return Ranking(idx, sc, co, inl)


WHITEN_SAMPLE = 100_000
"""Largest collection whose every descriptor trains the whitening; above, a fixed sample."""


class FittedPipeline:
    """The retrieval pipeline fitted on a collection: what ranks it and any new image.

    Fitted once (:meth:`fit`): the whitening, the αDBA ``database`` and, with ``graph``, the
    verification graph. :meth:`rank` ranks a new image exactly as :meth:`rank_collection`
    ranks the collection's own; every step works on top-k lists, memory ``O(N k)``.
    """

    FILES = ("pipeline.json", "pipeline.npz")

    def __init__(
        self,
        config: PipelineConfig,
        whitening: D.Whitening | None,
        white: np.ndarray,
        database: np.ndarray,
        paths: Sequence[str | os.PathLike],
        graph: V.VerificationGraph | None = None,
        method: str = "auto",
    ) -> None:
        self.config, self.whitening, self.graph, self.method = config, whitening, graph, method
        self.white = np.asarray(white, dtype=np.float32)
        self.database = np.asarray(database, dtype=np.float32)
        self.paths = [str(p) for p in paths]
        self.seconds: dict[str, float] = {}
        self._search = None
        self._search_white = None
        self._own: Ranking | None = None  # the collection's own ranking before graph hops
        self.graph_pending = False  # config.graph, but the graph is made elsewhere (shards)

    def __len__(self) -> int:
        return len(self.database)

    @classmethod
    def fit(
        cls,
        desc: np.ndarray,
        paths: Sequence[str | os.PathLike],
        config: PipelineConfig,
        store: V.LocalFeatureStore | None = None,
        progress: bool = True,
        method: str = "auto",
        verify: bool = True,
    ) -> FittedPipeline:
        """Learn the whitening and αDBA on ``desc``; verify the collection when ``graph``
        (unless ``verify`` is False: then the graph is left to be made in shards,
        :mod:`cbir_utils.engine.graph_shards`, and ``graph_pending`` says so)."""
        desc = np.asarray(desc, dtype=np.float32)
        if desc.ndim != 2 or desc.shape[0] != len(paths):
            raise InputError(
                f"{desc.shape[0] if desc.ndim else 0} descriptors for {len(paths)} images."
            )
        t0 = time.perf_counter()
        post = post_processing(config)
        whitening = None
        if post.whiten:  # learned on a sample of a very large collection (memory, time)
            rows = np.arange(len(desc))
            if len(desc) > WHITEN_SAMPLE:
                rows = np.sort(np.random.default_rng(0).choice(len(desc), WHITEN_SAMPLE, False))
            whitening = D.fit_whitening(
                desc[rows], post.whiten_dim, shrinkage=post.whiten_shrinkage
            )
        white = whitening.apply(desc) if whitening is not None else D.l2n(desc)
        fitted = cls(config, whitening, white, white, paths, method=method)
        if post.dba_k:
            own = np.arange(len(white))
            fitted.database = D.neighbour_mean(
                white, white, post.dba_k, post.dba_alpha, own, fitted._searcher("white")
            )
            fitted._search = None
        fitted.seconds["post"] = time.perf_counter() - t0
        if config.graph and not verify:
            fitted.graph_pending = True
        elif config.graph:
            t0 = time.perf_counter()
            n = len(white)
            own = fitted.verify_rows(np.arange(n), store, progress)
            fitted.graph = V.graph_from_lists(own.indices, own.inliers, n)
            # small collections keep whole lists, which rank_collection then reuses
            fitted._own = own if own.indices.shape[1] == n - 1 else None
            fitted.seconds["rerank"] = time.perf_counter() - t0
        return fitted

    def verify_rows(
        self, rows: np.ndarray, store: V.LocalFeatureStore | None = None, progress: bool = True
    ) -> Ranking:
        """The verified lists of collection ``rows`` that make the graph: each row's best
        ``rerank_top_n`` verified (whole lists up to ``FULL_LISTS_MAX`` images)."""
        n = len(self)
        k = n - 1 if n <= search.FULL_LISTS_MAX else self.config.rerank_top_n
        return self._rank_rows(np.asarray(rows, dtype=np.int64), k, store, progress, hops=False)

    # ---- queries

    def with_rerank(self, top_n: int) -> FittedPipeline:
        """This pipeline verifying the best ``top_n`` candidates of a query (0: none, and no
        graph hops); the fitted parts are shared, not copied."""
        out = copy.copy(self)
        out.config = replace(
            self.config, rerank=top_n > 0, rerank_top_n=top_n or self.config.rerank_top_n,
            graph=self.config.graph and top_n > 0,
        )  # fmt: skip
        if not out.config.graph:
            out.graph = None
        out._own = None  # the collection's ranking was made with the other depth
        return out

    def query_vectors(self, raw: np.ndarray, exclude: Sequence[int] | None = None) -> np.ndarray:
        """Post-processed query descriptors, as the collection's; ``exclude``: each query's own row."""
        post = post_processing(self.config)
        raw = np.asarray(raw, dtype=np.float32)
        q = self.whitening.apply(raw) if self.whitening is not None else D.l2n(raw)
        ex = None if exclude is None else np.asarray(exclude, dtype=np.int64)
        if post.dba_k:
            q = D.neighbour_mean(
                q, self.white, post.dba_k, post.dba_alpha, ex, self._searcher("white")
            )
        if post.qe_k:
            q = D.neighbour_mean(
                q, self.database, post.qe_k, post.qe_alpha, ex, self._searcher("database")
            )
        return q

    def _searcher(self, which: str):
        """The search index over ``white`` or ``database`` (``None``: exact search below
        :data:`cbir_utils.engine.search.EXACT_MAX`; built once, HNSW above)."""
        vectors = self.white if which == "white" else self.database
        if self.method == "auto" and len(vectors) <= search.EXACT_MAX:
            return None
        cache = "_search_white" if which == "white" else "_search"
        if getattr(self, cache, None) is None:
            setattr(self, cache, search.build_index(vectors, self.method))
        return getattr(self, cache)

    def neighbours(self, q: np.ndarray, k: int, exclude: Sequence[int] | None = None):
        """Top-``k`` database rows of post-processed queries (:mod:`cbir_utils.engine.search`)."""
        if self._search is None:
            self._search = search.build_index(self.database, self.method)
        return self._search.search(q, k, exclude)

    def _rank_rows(
        self,
        rows: np.ndarray,
        k: int,
        store: V.LocalFeatureStore | None,
        progress: bool,
        hops: bool = True,
    ) -> Ranking:
        q = self._own_queries(rows)
        return self._rank(q, [self.paths[i] for i in rows], k, rows, store, progress, hops, True)

    def _own_queries(self, rows: np.ndarray) -> np.ndarray:
        """The query vectors of collection rows: their database vectors, αQE-expanded."""
        q = self.database[rows]
        post = post_processing(self.config)
        if post.qe_k:
            q = D.neighbour_mean(
                q, self.database, post.qe_k, post.qe_alpha, rows, self._searcher("database")
            )
        return q

    def _rank(self, q, query_images, k, exclude, store, progress, hops=True, own=False) -> Ranking:
        cfg = self.config
        n = len(self)
        kk = min(n, max(k, cfg.rerank_top_n if cfg.rerank else 0))
        nb = self.neighbours(q, kk, exclude)
        store = store if store is not None else V.LocalFeatureStore()
        rows = []
        it = tqdm(
            range(len(q)), desc="Re-ranking", unit="query", disable=not (progress and cfg.rerank)
        )
        for r in it:
            ok = nb.indices[r] >= 0
            ids = nb.indices[r][ok]
            cos = nb.scores[r][ok].astype(np.float64)
            sc, inl = cos.copy(), np.full(len(ids), -1, dtype=np.int64)
            if cfg.rerank and len(ids):
                # the collection's own images: their stored features; a new image: computed
                # unless the store already has that file (see verify.rerank)
                qf = store.get(query_images[r]) if own else query_images[r]
                res = V.rerank(qf, [self.paths[i] for i in ids], cos, cfg.rerank_top_n,
                               cfg.rerank_weight, store=store)  # fmt: skip
                sc, inl = res.scores, res.inliers
            # this query's own row (`own` is for the whole call: must not be overwritten)
            row = None if exclude is None else int(exclude[r])
            if hops and self.graph is not None:
                ids, sc, cos, inl = self._hops(q[r], ids, sc, cos, inl, row)
            order = np.argsort(-sc, kind="stable")
            rows.append((ids[order], sc[order], cos[order], inl[order]))
        return _pad(rows, min(k, n))

    def _hops(self, qv, ids, sc, cos, inl, own):
        """Two-hop verification: printings verified with the query's verified matches."""
        hop = self.graph.hops(ids[inl >= self.graph.edge_inliers], own)
        if not len(hop):
            return ids, sc, cos, inl
        listed = np.isin(ids, hop)
        sc = np.where(listed, sc + self.config.hop_weight, sc)
        extra = np.setdiff1d(hop, ids)
        if len(extra):  # hops beyond the list: their cosine, plus the bonus
            ec = (self.database[extra] @ qv).astype(np.float64)
            ids = np.concatenate([ids, extra])
            cos = np.concatenate([cos, ec])
            sc = np.concatenate([sc, ec + self.config.hop_weight])
            inl = np.concatenate([inl, np.full(len(extra), -1, dtype=np.int64)])
        return ids, sc, cos, inl

    def rank(
        self,
        raw: np.ndarray,
        images: Sequence,
        k: int,
        exclude: Sequence[int] | None = None,
        store: V.LocalFeatureStore | None = None,
        progress: bool = True,
    ) -> Ranking:
        """Rank new images (or regions: ``images`` are the crops) against the collection, ``k``
        each; ``exclude`` is each query's own row when it is one (``-1`` otherwise).
        """
        ex = None
        if exclude is not None:
            ex = np.asarray([-1 if e is None else int(e) for e in exclude], dtype=np.int64)
        q = self.query_vectors(raw, None if ex is None else np.where(ex >= 0, ex, -1))
        return self._rank(q, list(images), k, ex, store, progress)

    def rank_collection(
        self, k: int | None = None, store: V.LocalFeatureStore | None = None, progress: bool = True
    ) -> Ranking:
        """Every image of the collection ranked against the others (``k`` each; all by default)."""
        n = len(self)
        k = n - 1 if k is None else min(int(k), n - 1)
        if self._own is not None and k == n - 1:
            rows = []
            queries = self._own_queries(np.arange(n))  # once for all rows
            for r in range(n):
                ok = self._own.indices[r] >= 0
                ids, sc = self._own.indices[r][ok], self._own.scores[r][ok]
                cos, inl = self._own.cosine[r][ok], self._own.inliers[r][ok]
                ids, sc, cos, inl = self._hops(queries[r], ids, sc, cos, inl, r)
                order = np.argsort(-sc, kind="stable")
                rows.append((ids[order], sc[order], cos[order], inl[order]))
            return _pad(rows, k)
        return self._rank_rows(np.arange(n), k, store, progress)

    # ---- persistence

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``pipeline.json`` and ``pipeline.npz`` into ``folder`` (atomically)."""

        folder = Path(folder)
        arrays = {"white": self.white, "database": self.database}
        if self.whitening is not None:
            arrays.update({f"whitening_{k}": v for k, v in self.whitening.to_dict().items()})
        if self.graph is not None:
            e = self.graph.edges.tocoo()
            arrays.update(graph_rows=e.row.astype(np.int64), graph_cols=e.col.astype(np.int64))
        buf = _io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(folder / self.FILES[1], buf.getvalue())
        save_json(
            folder / self.FILES[0],
            {
                "npz_sha1": hashlib.sha1(buf.getvalue()).hexdigest(),
                "config": self.config.to_dict(),
                "n": len(self),
                "method": self.method,
                "graph_edge_inliers": None if self.graph is None else self.graph.edge_inliers,
                "graph_pending": self.graph_pending,
            },
        )
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, paths: Sequence[str | os.PathLike]) -> FittedPipeline:
        """Read a pipeline saved by :meth:`save`; a file missing, damaged or from another index is
        an error that names it.
        """

        from scipy import sparse

        folder = Path(folder)
        head_file, npz_file = folder / cls.FILES[0], folder / cls.FILES[1]
        try:
            head = json.loads(head_file.read_text(encoding="utf-8"))
            config = PipelineConfig.from_dict(head["config"])
            raw = npz_file.read_bytes()
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"The saved pipeline in {folder} is damaged ({err}).") from err
        if head.get("npz_sha1") not in (None, hashlib.sha1(raw).hexdigest()):
            raise InputError(
                f"{npz_file} is not the file {head_file.name} describes (damaged, or copied "
                "from another index)."
            )
        try:
            with np.load(_io.BytesIO(raw), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise InputError(f"{npz_file} is damaged ({err}).") from err
        whitening = None
        if "whitening_mean" in arrays:
            whitening = D.Whitening(
                arrays["whitening_mean"], arrays["whitening_projection"],
                arrays["whitening_eigenvalues"], float(arrays["whitening_power"]),
            )  # fmt: skip
        n = int(head["n"])
        if len(paths) != n:
            raise InputError(f"The saved pipeline is for {n} images, not {len(paths)}.")
        graph = None
        if "graph_rows" in arrays:
            r, c = arrays["graph_rows"], arrays["graph_cols"]
            edges = sparse.csr_matrix((np.ones(len(r), dtype=bool), (r, c)), shape=(n, n))
            graph = V.VerificationGraph(edges, None, int(head["graph_edge_inliers"]))
        fitted = cls(config, whitening, arrays["white"], arrays["database"], paths, graph,
                     head.get("method", "auto"))  # fmt: skip
        fitted.graph_pending = bool(head.get("graph_pending", False))
        return fitted


@dataclass
class RankedCollection:
    """The collection ranked against itself (lists of ``search.list_length`` candidates, itself
    excluded), its post-processed ``descriptors``, and the :class:`FittedPipeline` that did it.
    """

    ranking: Ranking
    descriptors: np.ndarray | None = None
    graph: V.VerificationGraph | None = None
    whitening: D.Whitening | None = None
    seconds: dict = field(default_factory=dict)
    fitted: FittedPipeline | None = None


def rank_collection(
    desc: np.ndarray,
    paths: Sequence[str | os.PathLike],
    config: PipelineConfig,
    store: V.LocalFeatureStore | None = None,
    progress: bool = True,
) -> RankedCollection:
    """Rank every image of the collection against the others, as ``config`` says.

    Cosines after whitening, αDBA and αQE; with ``rerank`` the ``rerank_top_n`` best are
    verified and get ``rerank_weight * inlier_bonus``; with ``graph`` two-hop printings get
    ``hop_weight`` (each query's own edges ignored, as for a new query).
    """
    desc = np.asarray(desc, dtype=np.float32)
    n = len(paths)
    if desc.shape[0] != n:
        raise InputError(f"{desc.shape[0]} descriptors for {n} images.")
    fitted = FittedPipeline.fit(desc, paths, config, store, progress)
    t0 = time.perf_counter()
    ranking = fitted.rank_collection(search.list_length(n), store, progress)
    seconds = dict(fitted.seconds)
    if config.rerank:  # verification happens while ranking unless the graph needed it first
        seconds["rerank"] = seconds.get("rerank", 0.0) + time.perf_counter() - t0
    return RankedCollection(
        ranking,
        descriptors=fitted.database,
        graph=fitted.graph,
        whitening=fitted.whitening,
        seconds=seconds,
        fitted=fitted,
    )
