"""Nearest-neighbour search over unit-norm descriptors (inner product = cosine).

``exact``: chunked matrix products, never an ``N x N`` matrix (the database may be a memory
map); ``hnsw``: FAISS's graph index for millions of images. ``auto`` picks ``exact`` below
:data:`EXACT_MAX` images, as measured by ``benchmarks/search.py``. :func:`pairs_above`
(every pair above a cosine, memory ``O(N k)``) serves duplicate grouping.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from cbir_utils.errors import InputError

METHODS = ("exact", "hnsw")
EXACT_MAX = 50_000
"""``method="auto"`` searches exactly below this many database vectors, with HNSW above.

Measured with ``benchmarks/search.py`` (2 idle CPU cores, 1280-d, top 100, clustered
data): exact search costs about 27-29 ns per database vector and query in batches (0.27 ms
at 10k, 2.7 ms at 100k, 29 ms at 1M; 6-8 times more one query at a time); HNSW answers in
0.9 ms at 100k (recall@100 0.97, ``ef`` 200) and 4.9 ms at 1M (recall@100 0.96, ``ef``
800), but its build costs 0.3-0.6 ms per vector, so it pays off when the whole collection
is queried above roughly 50k images (and for any large collection queried often). IVF
needed a quarter of its lists probed for recall 0.95, which is slower than exact search at
100k."""
AUTO_ANN = "hnsw"
"""The approximate method ``auto`` uses above :data:`EXACT_MAX` (see ``benchmarks/search.py``)."""
DEFAULT_K_MAX = 100
"""Partners kept per image by :func:`pairs_above` (memory ``O(N k_max)``)."""
PAIRS_EXACT_MAX = 10_000
""":func:`pairs_above` with ``method="auto"`` is exact below this many images, IVF above.

Measured with ``benchmarks/pairs.py`` (2 shared CPU cores, 1280-d): exact all-pairs costs
grow as N^2 (7 s at 10k, 77 s at 30k) while the IVF self-join grows about linearly and
found every pair above 0.9 at 10k and 30k."""
PAIRS_LIST_SIZE = 128
"""Images per k-means cell in the IVF self-join of :func:`pairs_above`."""
PAIRS_NPROBE = 8
PAIRS_SKETCH_DIM = 128
"""Dimensions of the random projection the IVF self-join clusters on (speed only)."""
"""Cells each image is compared with in the IVF self-join (recall/speed trade-off)."""
_CELLS = 1 << 24  # similarity cells per chunk in exact search (64 MiB of float32)


class Neighbours(NamedTuple):
    """Search result: ``indices`` and ``scores`` ``(n_queries, k)``, best first.

    Missing neighbours (fewer than ``k`` candidates) have index ``-1`` and score ``-inf``.
    """

    indices: np.ndarray
    scores: np.ndarray


class Pairs(NamedTuple):
    """Image pairs ``i < j`` with their cosine ``score``, sorted by ``i`` then ``j``."""

    i: np.ndarray
    j: np.ndarray
    score: np.ndarray


FULL_LISTS_MAX = 5000
"""Up to this many images, every query's list holds the whole collection (exact metrics)."""
EVAL_TOP = 1000
"""Above :data:`FULL_LISTS_MAX`, the length of the evaluated lists."""


def list_length(n: int) -> int:
    """The ranked-list length an evaluation of ``n`` images uses (all others, or the top)."""
    return max(n - 1, 0) if n <= FULL_LISTS_MAX else EVAL_TOP


def _as_vectors(x: np.ndarray, name: str = "descriptors") -> np.ndarray:
    if not hasattr(x, "ndim"):
        x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise InputError(f"{name} must be a 2-D array (N, D), got shape {x.shape}.")
    return x


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}.")
    return int(k)


def _sort_rows(idx: np.ndarray, val: np.ndarray) -> Neighbours:
    """Each row best first; equal scores by ascending index, missing (-1) last."""
    key_idx = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    order = np.lexsort((key_idx, -val), axis=1)
    return Neighbours(np.take_along_axis(idx, order, 1), np.take_along_axis(val, order, 1))


def _all_own(excl: np.ndarray | None) -> int:
    """1 when every query excludes a row (lists one shorter), else 0: ``-1`` costs nothing."""
    return int(excl is not None and len(excl) > 0 and bool((excl >= 0).all()))


def exact_search(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    exclude: Sequence[int] | np.ndarray | None = None,
    cells: int = _CELLS,
    progress: bool = False,
) -> Neighbours:
    """Exact top-``k`` by inner product, by blocks of queries and chunks of the database, memory
    ``O(cells + n_queries k)``. ``exclude``: per query, a row that is not a candidate (``-1``).
    Lists have ``min(k, N)`` columns (one fewer when every query excludes a row).
    """
    q = np.ascontiguousarray(_as_vectors(queries, "queries"), dtype=np.float32)
    db = _as_vectors(database, "database")
    k = _check_k(k)
    n, nq = len(db), len(q)
    if q.shape[1] != db.shape[1] and nq and n:
        raise InputError(f"Queries have {q.shape[1]} dimensions, the database {db.shape[1]}.")
    excl = None
    if exclude is not None:
        excl = np.asarray(exclude, dtype=np.int64).reshape(-1)
        if len(excl) != nq:
            raise InputError(f"exclude has {len(excl)} entries for {nq} queries.")
    k = min(k, max(n - _all_own(excl), 0))
    idx = np.full((nq, k), -1, dtype=np.int64)
    val = np.full((nq, k), -np.inf, dtype=np.float32)
    if k == 0 or nq == 0:
        return Neighbours(idx, val)
    qb = max(1, min(nq, 4096, cells // max(1, min(n, 65536))))
    cb = max(k, cells // qb)
    for a in tqdm(range(0, nq, qb), desc="Exact search", unit="block", disable=not progress):
        b = min(nq, a + qb)
        best_i = np.full((b - a, 0), -1, dtype=np.int64)
        best_v = np.full((b - a, 0), -np.inf, dtype=np.float32)
        for c in range(0, n, cb):
            d = min(n, c + cb)
            s = q[a:b] @ np.asarray(db[c:d], dtype=np.float32).T
            if excl is not None:
                r = np.flatnonzero((excl[a:b] >= c) & (excl[a:b] < d))
                s[r, excl[a:b][r] - c] = -np.inf
            kk = min(k, d - c)
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < d - c else None
            if part is None:
                part = np.broadcast_to(np.arange(d - c), (b - a, d - c))
            cand_v = np.take_along_axis(s, part, 1)
            cand_i = part + c
            all_v = np.concatenate([best_v, cand_v], 1)
            all_i = np.concatenate([best_i, cand_i], 1)
            if all_v.shape[1] > k:
                keep = np.argpartition(-all_v, k - 1, axis=1)[:, :k]
                all_v = np.take_along_axis(all_v, keep, 1)
                all_i = np.take_along_axis(all_i, keep, 1)
            best_v, best_i = all_v, all_i
        best_i = np.where(np.isneginf(best_v), -1, best_i)
        srt = _sort_rows(best_i, best_v)
        idx[a:b], val[a:b] = srt.indices, srt.scores
    return Neighbours(idx, val)


EF_MIN = 64
"""Smallest HNSW search breadth: what a search for one or two neighbours (αDBA, αQE) uses.
Measured at a million 64-d vectors (``benchmarks/scale.py``'s): the nearest neighbour is
found for every query with 32 or 64 (16 misses 8 %); against the top-100 breadth (800) for
every search, a new query's descriptor stage falls from 12.9 to 2.2-2.9 ms (recall@100 0.982
unchanged) and fitting αDBA on the million from 30 to 4 minutes."""


def default_ef(n: int) -> int:
    """HNSW search breadth of a top-100 search in ``n`` vectors: 200 up to 100k, ``n^0.6`` beyond
    (``k / 100`` of it for ``k`` neighbours, at least :data:`EF_MIN`). Measured
    (``benchmarks/search.py``): recall@100 0.97 at 100k, 0.96 at a million (4.9 ms a query).
    """
    return int(min(4096, round(200 * max(1.0, n / 100_000) ** 0.6)))


class SearchIndex:
    """A built search index over ``n`` unit-norm vectors of ``dim`` (see :func:`build_index`)."""

    def __init__(self, method: str, vectors: np.ndarray, index, params: dict, seconds: float):
        self.method = method
        self.n, self.dim = int(vectors.shape[0]), int(vectors.shape[1])
        self.params = dict(params)
        self.build_seconds = float(seconds)
        self._vectors = vectors  # kept for exact search and exact re-ranking
        self._index = index

    def __len__(self) -> int:
        return self.n

    def memory_bytes(self) -> int:
        """Memory the index itself holds (exact: the vectors it searches)."""
        if self._index is None:
            return int(self._vectors.nbytes)
        links = self._index.hnsw.neighbors.size() * 4 + self._index.hnsw.offsets.size() * 8
        return int(self.n * self.dim * 4 + links)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[int] | np.ndarray | None = None,
        **params,
    ) -> Neighbours:
        """Top-``k`` neighbours of ``queries`` (see :func:`exact_search` for ``exclude``).

        ``params`` override search-time parameters: ``ef`` (HNSW).
        """
        k = _check_k(k)
        if self._index is None:
            return exact_search(queries, self._vectors, k, exclude)
        q = np.ascontiguousarray(_as_vectors(queries, "queries"), dtype=np.float32)
        p = {**self.params, **params}
        excl = None
        if exclude is not None:
            excl = np.asarray(exclude, dtype=np.int64).reshape(-1, 1)
            if len(excl) != len(q):
                raise InputError(f"exclude has {len(excl)} entries for {len(q)} queries.")
        extra = int(excl is not None and bool((excl >= 0).any()))
        kk = min(k + extra, self.n)
        if "ef" in p:  # HNSW: breadth in proportion to k (``ef`` is for the top 100)
            self._index.hnsw.efSearch = int(max(kk, EF_MIN, round(p["ef"] * min(1.0, kk / 100))))
        val, idx = self._index.search(q, kk)
        idx = idx.astype(np.int64)
        val = np.where(idx < 0, -np.inf, val).astype(np.float32)
        if extra:
            hit = (idx == excl) & (excl >= 0)
            idx = np.where(hit, -1, idx)
            val = np.where(hit, -np.inf, val)
        out = _sort_rows(idx, val)
        kout = min(k, max(self.n - _all_own(excl), 0))
        return Neighbours(out.indices[:, :kout], out.scores[:, :kout])


def build_index(
    vectors: np.ndarray,
    method: str = "auto",
    *,
    hnsw_m: int = 32,
    ef_construction: int = 64,
    ef: int | None = None,
    threads: int | None = None,
) -> SearchIndex:
    """Build a search index over unit-norm ``vectors`` (``auto``: :data:`AUTO_ANN` from
    :data:`EXACT_MAX` images); ``ef`` defaults to :func:`default_ef`.
    """
    x = _as_vectors(vectors)
    if method == "auto":
        method = "exact" if len(x) < EXACT_MAX else AUTO_ANN
    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}; choose 'auto' or one of {METHODS}.")
    t0 = time.perf_counter()
    if method == "exact":
        return SearchIndex("exact", x, None, {}, time.perf_counter() - t0)
    import faiss

    if threads is not None:
        faiss.omp_set_num_threads(int(threads))
    xf = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexHNSWFlat(xf.shape[1], int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = int(ef_construction)
    index.add(xf)
    ef = int(ef or default_ef(len(x)))
    params = {"m": int(hnsw_m), "ef_construction": int(ef_construction), "ef": ef}
    return SearchIndex(method, xf, index, params, time.perf_counter() - t0)


def knn(desc: np.ndarray, k: int, method: str = "auto", **index_params) -> Neighbours:
    """Each image's ``k`` nearest *other* images of the collection.

    Returns:
        :class:`Neighbours` ``(N, min(k, N - 1))``, best first, ties by index.
    """
    x = _as_vectors(desc)
    index = build_index(x, method, **index_params)
    return index.search(x, k, exclude=np.arange(len(x)))


def pairs_above(
    desc: np.ndarray,
    threshold: float,
    k_max: int | None = DEFAULT_K_MAX,
    method: str = "auto",
    progress: bool = False,
    **params,
) -> Pairs:
    """Every pair ``(i < j, score)`` whose cosine reaches ``threshold``, sorted.

    Each image keeps its ``k_max`` best partners (``None``: all), memory ``O(N k_max)``; a pair
    is kept when either image keeps it, and capped images are warned about. ``exact`` scores
    every pair by chunked products; ``ivf`` is an inverted-file self-join (k-means cells of
    about :data:`PAIRS_LIST_SIZE` images, each image compared with its ``nprobe`` nearest
    cells: exact scores, a pair missed only when neither probes the other's cell). ``auto``:
    ``exact`` below :data:`PAIRS_EXACT_MAX` images.
    """
    x = _as_vectors(desc)
    n = len(x)
    if len(x) and not np.isfinite(np.asarray(x[: min(n, 4096)])).all():
        raise InputError("Descriptors contain NaN or infinite values.")
    if method == "auto":
        method = "exact" if n < PAIRS_EXACT_MAX else "ivf"
    if method not in ("exact", "ivf"):
        raise InputError(f"Unknown method {method!r} for pairs; choose 'auto', 'exact' or 'ivf'.")
    if k_max is not None:
        k_max = _check_k(k_max)
    t = float(threshold)
    if n < 2:
        return Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if method == "exact":
        ii, jj, ss, capped = _exact_pairs(x, t, k_max, progress)
    else:
        ii, jj, ss, capped = _ivf_join_pairs(x, t, k_max, progress=progress, **params)
    if capped:
        warnings.warn(
            f"{capped} image(s) have more than {k_max} neighbours above the threshold {t}; "
            "only each image's k_max best are kept (raise k_max to keep more).",
            stacklevel=2,
        )
    lo, hi = np.minimum(ii, jj).astype(np.int64), np.maximum(ii, jj).astype(np.int64)
    key = lo * n + hi
    key, first = np.unique(key, return_index=True)
    return Pairs(key // n, key % n, ss[first].astype(np.float32))


def _cap_rows(rows: np.ndarray, scores: np.ndarray, k_max: int | None) -> tuple[np.ndarray, int]:
    """Indices of the entries to keep: each row's ``k_max`` best; and how many rows were cut."""
    if k_max is None or not len(rows):
        return np.arange(len(rows)), 0
    order = np.lexsort((-scores, rows))
    r = rows[order]
    start = np.searchsorted(r, r, side="left")
    rank = np.arange(len(r)) - start
    counts = np.bincount(r)
    return np.sort(order[rank < k_max]), int((counts > k_max).sum())


def _ivf_join_pairs(
    x: np.ndarray,
    t: float,
    k_max: int | None,
    nlist: int | None = None,
    nprobe: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
):
    import faiss

    xf = np.ascontiguousarray(x, dtype=np.float32)
    n, d = xf.shape
    nl = int(nlist or max(1, 2 ** round(math.log2(max(1.0, n / PAIRS_LIST_SIZE)))))
    nl = max(1, min(nl, n))
    probes = max(1, min(int(nprobe or PAIRS_NPROBE), nl))
    n_train = int(min(n, train_size or 32 * nl))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=n_train, replace=False))
    # the cells only need to be roughly right: k-means and assignment run on a random
    # projection to PAIRS_SKETCH_DIM dimensions (inner products approximately preserved),
    # the comparisons themselves on the full vectors
    xs = xf
    if d > PAIRS_SKETCH_DIM:
        proj = rng.standard_normal((d, PAIRS_SKETCH_DIM)).astype(np.float32)
        xs = np.empty((n, PAIRS_SKETCH_DIM), dtype=np.float32)
        for a in range(0, n, 65536):
            xs[a : a + 65536] = xf[a : a + 65536] @ proj
        xs /= np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 1e-12)
    km = faiss.Kmeans(xs.shape[1], nl, niter=10, spherical=True, seed=int(seed), verbose=False)
    km.cp.max_points_per_centroid = max(1, -(-n_train // nl))
    km.cp.min_points_per_centroid = 1
    km.train(np.ascontiguousarray(xs[sample]))
    quantizer = faiss.IndexFlatIP(xs.shape[1])
    quantizer.add(km.centroids)
    _, cells = quantizer.search(xs, probes)  # (n, probes), nearest cell first
    del xs
    primary = cells[:, 0]
    members = np.argsort(primary, kind="stable")
    m_bounds = np.searchsorted(primary[members], np.arange(nl + 1))
    q_rows = np.repeat(np.arange(n), probes)
    q_cells = cells.ravel()
    q_order = np.argsort(q_cells, kind="stable")
    q_bounds = np.searchsorted(q_cells[q_order], np.arange(nl + 1))
    ii, jj, ss = [], [], []
    for c in tqdm(range(nl), desc="Pairs (IVF)", unit="cell", disable=not progress):
        mem = members[m_bounds[c] : m_bounds[c + 1]]
        qs = q_rows[q_order[q_bounds[c] : q_bounds[c + 1]]]
        if not len(mem) or not len(qs):
            continue
        xm = xf[mem]
        step = max(1, _CELLS // len(mem))
        for a in range(0, len(qs), step):
            qa = qs[a : a + step]
            s = xf[qa] @ xm.T
            s[qa[:, None] == mem[None, :]] = -np.inf
            r, col = np.nonzero(s >= t)
            ii.append(qa[r])
            jj.append(mem[col])
            ss.append(s[r, col])
    if not ii:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0
    ii, jj, ss = np.concatenate(ii), np.concatenate(jj), np.concatenate(ss)
    keep, capped = _cap_rows(ii, ss, k_max)
    return ii[keep], jj[keep], ss[keep], capped


def _exact_pairs(x: np.ndarray, t: float, k_max: int | None, progress: bool):
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    step = max(1, _CELLS // n)
    ii, jj, ss = [], [], []
    capped = 0
    for a in tqdm(range(0, n, step), desc="Pairs", unit="block", disable=not progress):
        b = min(n, a + step)
        s = x[a:b] @ x.T
        s[np.arange(b - a), np.arange(a, b)] = -np.inf
        hit = s >= t
        if k_max is not None and k_max < n - 1:
            over = np.flatnonzero(hit.sum(1) > k_max)
            if len(over):  # crowded rows keep their k_max best
                capped += len(over)
                kth = -np.partition(-s[over], k_max - 1, axis=1)[:, k_max - 1]
                hit[over] &= s[over] >= kth[:, None]
        r, c = np.nonzero(hit)
        ii.append(r + a)
        jj.append(c)
        ss.append(s[r, c])
    return np.concatenate(ii), np.concatenate(jj), np.concatenate(ss), capped
