"""Nearest-neighbour search: exact (chunked) and FAISS agree; duplicate pairs match brute force."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cbir_utils.engine import search
from cbir_utils.paths import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
from synthetic import synthetic_vectors  # noqa: E402


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_topk(q: np.ndarray, db: np.ndarray, k: int, exclude=None):
    s = q @ db.T
    if exclude is not None:
        s[np.arange(len(q)), exclude] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(db.shape[0]), s.shape), -s), axis=1)[:, :k]
    return order, np.take_along_axis(s, order, 1)


@pytest.fixture(scope="module")
def clustered():
    return synthetic_vectors(3000, dim=64, kind="clustered", seed=1, cluster_size=30)


def test_exact_search_hand_computed():
    db = unit([[1, 0], [0, 1], [1, 1], [-1, 0]])
    q = unit([[1, 0.1]])
    nb = search.exact_search(q, db, k=3)
    # cosines: [0.995, 0.0995, 0.774, -0.995] -> rows 0, 2, 1
    assert nb.indices.tolist() == [[0, 2, 1]]
    np.testing.assert_allclose(nb.scores[0], [0.99504, 0.77399, 0.09950], atol=1e-4)
    # excluding row 0 promotes the others; k is capped at N - 1
    nb = search.exact_search(q, db, k=10, exclude=[0])
    assert nb.indices.tolist() == [[2, 1, 3]]


def test_exact_search_chunked_matches_brute_force(rng):
    db = unit(rng.standard_normal((500, 16)))
    q = db[:37]
    ref_i, ref_s = brute_topk(q, db, 20, exclude=np.arange(37))
    # tiny blocks force many query blocks and database chunks
    nb = search.exact_search(q, db, 20, exclude=np.arange(37), cells=900)
    np.testing.assert_array_equal(nb.indices, ref_i)
    np.testing.assert_allclose(nb.scores, ref_s, atol=1e-6)
    assert nb.indices.shape == (37, 20) and (nb.indices != np.arange(37)[:, None]).all()


def test_exact_search_on_memmap(tmp_path, rng):
    db = unit(rng.standard_normal((300, 8)))
    np.save(tmp_path / "db.npy", db)
    mm = np.load(tmp_path / "db.npy", mmap_mode="r")
    a = search.exact_search(db[:5], mm, 7, cells=64)
    b = search.exact_search(db[:5], db, 7)
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize(
    "method, params, min_recall",
    [
        ("hnsw", {"hnsw_m": 16, "ef": 128}, 0.9),
    ],
)
def test_approximate_methods_find_most_true_neighbours(clustered, method, params, min_recall):
    q = clustered[:100]
    ex = search.exact_search(q, clustered, 10, exclude=np.arange(100))
    nb = search.build_index(clustered, method, **params).search(q, 10, exclude=np.arange(100))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nb.indices, ex.indices)])
    assert recall >= min_recall, recall
    assert not (nb.indices == np.arange(100)[:, None]).any()  # never itself
    # the scores returned are true cosines of the indices returned (re-ranked or exact)
    if method == "hnsw":
        true = np.einsum("qd,qkd->qk", q, clustered[nb.indices])
        np.testing.assert_allclose(nb.scores, true, atol=1e-4)


def test_auto_method_by_size(monkeypatch, clustered):
    assert search.build_index(clustered[:100]).method == "exact"
    monkeypatch.setattr(search, "EXACT_MAX", 1000)
    idx = search.build_index(clustered)
    assert idx.method == search.AUTO_ANN == "hnsw" and idx.params["ef"] >= 100


def test_knn_excludes_self_and_caps_k(clustered):
    x = clustered[:50]
    nb = search.knn(x, 100)
    assert nb.indices.shape == (50, 49)
    assert not (nb.indices == np.arange(50)[:, None]).any()
    idx, val = nb  # unpacks as (indices, scores), like groups.knn
    assert (np.diff(val, axis=1) <= 1e-7).all()


def test_bad_input():
    with pytest.raises(ValueError, match="Unknown method"):
        search.build_index(np.eye(3, dtype=np.float32), "annoy")
    with pytest.raises(ValueError, match="2-D"):
        search.exact_search(np.ones(3), np.eye(3), 1)
    with pytest.raises(ValueError, match="positive integer"):
        search.exact_search(np.eye(3), np.eye(3), 0)
    with pytest.raises(ValueError, match="Unknown method 'hnsw' for pairs"):
        search.pairs_above(np.eye(3, dtype=np.float32), 0.5, method="hnsw")


# --------------------------------------------------------------------------- pairs


def planted(n_base: int, dim: int, seed: int) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Random vectors plus near-copies of some of them (cosine about 0.95)."""
    rng = np.random.default_rng(seed)
    base = unit(rng.standard_normal((n_base, dim)))
    src = rng.choice(n_base, size=n_base // 5, replace=False)
    copies = unit(base[src] + 0.3 / np.sqrt(dim) * rng.standard_normal((len(src), dim)) * 1.0)
    x = np.concatenate([base, copies])
    return x, {(int(s), n_base + c) for c, s in enumerate(src)}


def brute_pairs(x: np.ndarray, t: float) -> set[tuple[int, int]]:
    s = x @ x.T
    i, j = np.nonzero(np.triu(s >= t, 1))
    return set(zip(i.tolist(), j.tolist()))


def test_pairs_hand_computed():
    x = unit([[1, 0], [0.96, 0.28], [0, 1], [0.28, 0.96], [-1, 0]])
    p = search.pairs_above(x, 0.9)
    assert list(zip(p.i.tolist(), p.j.tolist())) == [(0, 1), (2, 3)]
    np.testing.assert_allclose(p.score, [0.96, 0.96], atol=1e-6)
    i, j, s = search.pairs_above(x, 0.2)  # unpacks like groups.pairs_above
    assert (0, 3) in set(zip(i.tolist(), j.tolist())) and (i < j).all()


def test_pairs_match_brute_force_exact_and_ivf():
    x, truth = planted(1500, 48, seed=3)
    ref = brute_pairs(x, 0.8)
    assert truth <= ref  # the planted copies are found by brute force
    exact = search.pairs_above(x, 0.8, method="exact")
    got = set(zip(exact.i.tolist(), exact.j.tolist()))
    assert got == ref
    assert (np.diff(exact.i) >= 0).all()
    s = (x[exact.i] * x[exact.j]).sum(1)
    np.testing.assert_allclose(exact.score, s, atol=1e-5)
    ivf = search.pairs_above(x, 0.8, k_max=10, method="ivf", nlist=16, nprobe=4)
    got_ivf = set(zip(ivf.i.tolist(), ivf.j.tolist()))
    assert got_ivf <= ref  # no false pair: scores are exact
    assert len(got_ivf) / len(ref) >= 0.95


def test_pairs_cap_warns_and_keeps_best(rng):
    # six copies of one vector: each has 5 neighbours above the threshold
    v = unit(rng.standard_normal((1, 8)))
    x = np.concatenate([v + 0.01 * rng.standard_normal((6, 8)), rng.standard_normal((20, 8))])
    x = unit(x)
    ref = brute_pairs(x, 0.99)
    assert len(ref) == 15
    with pytest.warns(UserWarning, match="k_max"):
        capped = search.pairs_above(x, 0.99, k_max=2)
    assert 0 < len(capped.i) < 15
    full = search.pairs_above(x, 0.99, k_max=None)
    assert set(zip(full.i.tolist(), full.j.tolist())) == ref


def test_ranked_lists_match_the_full_ranking(clustered, monkeypatch):
    from cbir_utils.evaluation import retrieval

    x, q = clustered[:400], np.arange(0, 400, 7)
    idx, val = retrieval.ranked_lists(x, q, 10)
    scores = x[q] @ x.T
    scores[np.arange(len(q)), q] = -np.inf
    ref_i = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    ref_v = np.take_along_axis(scores, ref_i, 1)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(val, ref_v, atol=1e-6)
    # above the size threshold the index "auto" builds is FAISS HNSW, nearly as good
    monkeypatch.setattr(search, "EXACT_MAX", 100)
    index = search.build_index(x)
    assert index.method == "hnsw"
    idx2 = index.search(x[q], 10, exclude=q).indices
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx2, ref_i)]) > 0.95


def test_cap_rows_keeps_each_rows_best():
    rows = np.array([0, 0, 0, 1, 2, 2])
    scores = np.array([0.9, 0.99, 0.95, 0.5, 0.7, 0.8])
    keep, cut = search._cap_rows(rows, scores, 2)
    assert keep.tolist() == [1, 2, 3, 4, 5] and cut == 1  # row 0 loses its 0.9
    keep, cut = search._cap_rows(rows, scores, None)
    assert keep.tolist() == list(range(6)) and cut == 0


def test_ivf_pairs_with_one_cell_are_exact():
    # a single cell holds everything: the self-join is the brute force
    x, _ = planted(400, 24, seed=7)
    ref = brute_pairs(x, 0.85)
    got = search.pairs_above(x, 0.85, k_max=None, method="ivf", nlist=1)
    assert set(zip(got.i.tolist(), got.j.tolist())) == ref


@pytest.mark.parametrize("method", ["exact", "hnsw"])
@pytest.mark.parametrize("k", [3, 12, 50])
def test_a_new_query_can_reach_every_indexed_row(rng, method, k):
    """A query that is not in the database (exclude -1) loses no candidate, exact and HNSW
    alike: with k >= N every row comes back once (a 5-image index returned 4 rows); a
    database row leaves only itself out; a mixed batch costs the new query nothing."""
    n = 12
    db = unit(rng.standard_normal((n, 8)))
    index = search.build_index(db, method)
    new = unit(rng.standard_normal((2, 8)))
    got = index.search(new, k, exclude=[-1, -1]).indices
    assert got.shape == (2, min(k, n))
    assert all(len(set(row)) == min(k, n) and -1 not in row for row in got.tolist())
    if k >= n:
        assert all(sorted(row) == list(range(n)) for row in got.tolist())
    own = index.search(db[:2], k, exclude=[0, 1]).indices
    assert own.shape == (2, min(k, n - 1))
    assert 0 not in own[0] and 1 not in own[1] and -1 not in own
    mixed = index.search(np.vstack([new[:1], db[:1]]), k, exclude=[-1, 0]).indices
    assert mixed.shape == (2, min(k, n))
    assert sorted(mixed[0].tolist()) == sorted(got[0].tolist())
    assert 0 not in mixed[1] and (mixed[1] >= 0).sum() == min(k, n - 1)
