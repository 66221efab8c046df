"""Tests of cbir_utils.evaluation.metrics: hand-computed cases (arithmetic in comments) and sklearn checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

from cbir_utils.evaluation import metrics as M
from cbir_utils.evaluation.metrics import (
    PairwiseResult,
    average_precision,
    best_threshold,
    classification_metrics,
    micro_ap,
    ndcg_at_k,
    pairwise_prf,
    pr_curve,
    precision_at_k,
    rank,
    recall_at_k,
    retrieval_metrics,
)

# Two queries, three candidates, all valid. Used by several hand-computed tests.
#   q0: 0.9 (rel)  0.5        0.2 (rel)
#   q1: 0.8        0.6 (rel)  0.1
SCORES = np.array([[0.9, 0.5, 0.2], [0.8, 0.6, 0.1]])
RELEVANT = np.array([[True, False, True], [False, True, False]])


# --------------------------------------------------------------------------- per-query


def test_per_query_metrics_hand_computed() -> None:
    rel = np.array([1, 0, 1, 0, 0])
    # relevant at ranks 1 and 3: AP = (1/1 + 2/3) / 2 = 5/6 = 0.8333
    assert average_precision(rel) == pytest.approx(5 / 6)
    assert average_precision(rel, n_relevant=2) == pytest.approx(5 / 6)
    assert precision_at_k(rel, 1) == 1.0  # 1/1
    assert precision_at_k(rel, 3) == pytest.approx(2 / 3)  # 2 hits / 3
    assert recall_at_k(rel, 3) == 1.0  # 2 hits / 2 relevant
    assert recall_at_k(rel, 1) == 0.5  # 1 / 2
    # DCG@3 = 1/log2(2) + 0/log2(3) + 1/log2(4); IDCG@3 from min(3, 2) = 2 ones
    expected = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(rel, 3) == pytest.approx(expected)


def test_per_query_metrics_with_missing_relevant() -> None:
    rel = np.array([1, 0, 1, 0, 0])
    # a third relevant item never retrieved adds 0: AP = (1 + 2/3) / 3 = 5/9
    assert average_precision(rel, n_relevant=3) == pytest.approx(5 / 9)
    assert recall_at_k(rel, 3, n_relevant=3) == pytest.approx(2 / 3)
    # IDCG@3 now from 3 ones: 1 + 1/log2(3) + 1/log2(4)
    expected = (1 + 0.5) / (1 + 1 / math.log2(3) + 0.5)
    assert ndcg_at_k(rel, 3, n_relevant=3) == pytest.approx(expected)
    with pytest.raises(ValueError, match="n_relevant"):
        average_precision(rel, n_relevant=1)


def test_ndcg_idcg_uses_min_k_nrelevant() -> None:
    # one relevant at rank 2: DCG@2 = 1/log2(3); IDCG@2 from min(2, 1) = 1 one = 1
    assert ndcg_at_k(np.array([0, 1, 0]), 2) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(np.array([0, 1, 0]), 1) == 0.0
    # perfect ranking
    assert ndcg_at_k(np.array([1, 1, 0, 0]), 3) == pytest.approx(1.0)


def test_per_query_no_relevant_is_nan_and_bad_k_raises() -> None:
    rel = np.zeros(4, dtype=bool)
    assert math.isnan(average_precision(rel))
    assert math.isnan(recall_at_k(rel, 2))
    assert math.isnan(ndcg_at_k(rel, 2))
    assert precision_at_k(rel, 2) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        precision_at_k(rel, 0)
    with pytest.raises(ValueError, match="0/1"):
        average_precision(np.array([0, 2, 1]))


def test_k_larger_than_list() -> None:
    rel = np.array([1, 0, 0])
    assert precision_at_k(rel, 10) == pytest.approx(0.1)  # 1 hit / k=10 (missing ranks = 0)
    assert recall_at_k(rel, 10) == 1.0
    assert ndcg_at_k(rel, 10) == 1.0


# --------------------------------------------------------------------------- ranking


def test_rank_ties_broken_by_column_index() -> None:
    scores = np.array([[0.5, 0.7, 0.5, 0.7, 0.1]])
    # descending, ties in column order: 0.7 (1), 0.7 (3), 0.5 (0), 0.5 (2), 0.1 (4)
    assert rank(scores).tolist() == [[1, 3, 0, 2, 4]]
    # all-tied row: relevant at column 1 -> rank 2 -> AP = 1/2, deterministically
    res = retrieval_metrics(np.full((1, 3), 0.5), np.array([[False, True, False]]))
    assert res.map == pytest.approx(0.5)


def test_rank_puts_excluded_last_in_column_order() -> None:
    scores = np.array([[1.0, 0.2, 0.9, -np.inf], [0.3, 0.4, 0.1, 0.2]])
    mask = np.array([[False, True, True, True], [True, True, True, False]])
    # row 0: valid 2 (0.9), 1 (0.2); excluded 0 (mask), 3 (-inf) in column order
    # row 1: valid 1 (0.4), 0 (0.3), 2 (0.1); excluded 3
    assert rank(scores, mask).tolist() == [[2, 1, 0, 3], [1, 0, 2, 3]]


def test_mask_excludes_query_itself() -> None:
    # square query-vs-collection matrix; image 0 and 1 are one scene, 2 is alone
    scores = np.array([[1.0, 0.2, 0.8], [0.2, 1.0, 0.9], [0.8, 0.9, 1.0]])
    scene = np.array([0, 0, 1])
    relevant = scene[:, None] == scene[None, :]  # diagonal True: self would be a hit
    mask = ~np.eye(3, dtype=bool)
    res = retrieval_metrics(scores, relevant, mask=mask, ks=(1,))
    # q0 ranks [2 (0.8), 1 (0.2)] -> relevant at rank 2 -> AP 1/2
    # q1 ranks [2 (0.9), 0 (0.2)] -> AP 1/2; q2 has no other image of its scene
    assert res.per_query["ap"].iloc[:2].tolist() == pytest.approx([0.5, 0.5])
    assert res.per_query["n_relevant"].tolist() == [1, 1, 0]
    assert res.map == pytest.approx(0.5)
    assert res.n_queries == 2
    assert res.n_queries_without_relevant == 1
    # same result when the caller puts -inf on the diagonal instead of a mask
    inf_scores = scores.copy()
    np.fill_diagonal(inf_scores, -np.inf)
    assert retrieval_metrics(inf_scores, relevant, ks=(1,)).to_dict() == res.to_dict()
    # without the mask each query finds itself first and q2 counts as a query:
    # q0 ranks 0, 2, 1 -> AP (1 + 2/3)/2 = 5/6 ; q1 ranks 1, 2, 0 -> 5/6 ; q2 -> 1
    unmasked = retrieval_metrics(scores, relevant, ks=(1,))
    assert unmasked.map == pytest.approx((5 / 6 + 5 / 6 + 1) / 3)  # = 8/9
    assert unmasked.n_queries_without_relevant == 0


# --------------------------------------------------------------------------- retrieval_metrics


def test_retrieval_metrics_hand_computed() -> None:
    res = retrieval_metrics(SCORES, RELEVANT, ks=(1, 2))
    # q0: rel [1, 0, 1] -> AP = (1 + 2/3)/2 = 5/6 ; q1: rel [0, 1, 0] -> AP = (1/2)/1 = 1/2
    assert res.map == pytest.approx((5 / 6 + 1 / 2) / 2)  # = 2/3
    assert res.precision_at_k == pytest.approx({1: 0.5, 2: 0.5})  # P@1: (1+0)/2, P@2: (.5+.5)/2
    assert res.recall_at_k == pytest.approx({1: 0.25, 2: 0.75})  # R@1: (1/2+0)/2, R@2: (1/2+1)/2
    # nDCG@2: q0 = 1/1 / (1 + 1/log2 3); q1 = (1/log2 3) / 1
    l3 = math.log2(3)
    assert res.ndcg_at_k[2] == pytest.approx((1 / (1 + 1 / l3) + 1 / l3) / 2)
    assert res.mu_ap == pytest.approx(34 / 45)  # see test_micro_ap_hand_computed
    assert list(res.per_query.columns) == [
        "query", "n_candidates", "n_relevant", "ap", "P@1", "P@2", "R@1", "R@2", "nDCG@1", "nDCG@2"
    ]  # fmt: skip
    assert res.per_query["ap"].tolist() == pytest.approx([5 / 6, 1 / 2])


def test_query_without_relevant_excluded_and_counted() -> None:
    scores = np.vstack([SCORES, [[0.3, 0.2, 0.1]]])
    relevant = np.vstack([RELEVANT, [[False, False, False]]])
    res = retrieval_metrics(scores, relevant, ks=(1,))
    assert res.n_queries == 2
    assert res.n_queries_without_relevant == 1
    assert res.map == pytest.approx(2 / 3)  # unchanged: (5/6 + 1/2) / 2
    assert math.isnan(res.per_query["ap"].iloc[2])
    # but its false positives still enter µAP. Pooled: 0.9T 0.8F 0.6T 0.5F 0.3F {0.2T 0.2F}
    # 0.1F 0.1F; tied scores form one threshold, so at 0.2: tp 3 of 7 predicted.
    # µAP = (1/1 + 2/3 + 3/7) / 3 = 44/63 (was 34/45 without this query)
    assert res.mu_ap == pytest.approx(44 / 63)


def test_to_dict_flat_and_json_serialisable() -> None:
    d = retrieval_metrics(SCORES, RELEVANT, ks=(1, 5, 10)).to_dict()
    assert list(d) == [
        "mAP", "P@1", "P@5", "P@10", "R@1", "R@5", "R@10",
        "nDCG@1", "nDCG@5", "nDCG@10", "muAP", "n_queries", "n_queries_without_relevant",
    ]  # fmt: skip
    assert d["n_queries"] == 2
    # k larger than the database (3 candidates): denominator stays k -> (2/10 + 1/10) / 2
    assert d["P@10"] == pytest.approx(0.15)
    json.dumps(d, allow_nan=False)


def test_perfect_ranking() -> None:
    rng = np.random.default_rng(0)
    scene = np.repeat(np.arange(5), 3)
    relevant = scene[:, None] == scene[None, :]
    mask = ~np.eye(scene.size, dtype=bool)
    # relevant pairs score in [0.8, 1), others in [0, 0.5): globally separable
    scores = np.where(
        relevant, 0.8 + 0.2 * rng.random(relevant.shape), 0.5 * rng.random(relevant.shape)
    )
    res = retrieval_metrics(scores, relevant, mask=mask, ks=(1, 2, 5))
    assert res.map == pytest.approx(1.0)
    assert res.mu_ap == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in res.ndcg_at_k.values())
    assert res.recall_at_k[2] == pytest.approx(1.0)  # 2 other images per scene
    assert res.precision_at_k[5] == pytest.approx(2 / 5)
    assert pairwise_prf(scores, relevant, 0.8, mask).f1 == pytest.approx(1.0)


def test_all_irrelevant_database() -> None:
    relevant = np.zeros_like(SCORES, dtype=bool)
    res = retrieval_metrics(SCORES, relevant)
    assert res.n_queries == 0
    assert res.n_queries_without_relevant == 2
    assert math.isnan(res.map) and math.isnan(res.mu_ap)
    d = res.to_dict()
    assert d["mAP"] is None and d["muAP"] is None
    json.dumps(d, allow_nan=False)
    assert math.isnan(micro_ap(SCORES, relevant))
    r = pairwise_prf(SCORES, relevant, 0.5)  # 0.9, 0.5, 0.8, 0.6 >= 0.5: 4 false positives
    assert (r.precision, r.recall, r.f1, r.tp, r.fp, r.fn) == (0.0, 0.0, 0.0, 0, 4, 0)
    with pytest.raises(ValueError, match="no relevant"):
        best_threshold(SCORES, relevant)


def test_map_matches_sklearn_per_query_on_random_data() -> None:
    rng = np.random.default_rng(42)
    scores = rng.random((20, 30))
    relevant = rng.random((20, 30)) < 0.15
    mask = rng.random((20, 30)) < 0.9
    relevant[3] = False  # at least one query without relevant candidates
    res = retrieval_metrics(scores, relevant, mask=mask)
    expected = []
    for i in range(20):
        y = relevant[i][mask[i]]
        if y.any():
            expected.append(average_precision_score(y, scores[i][mask[i]]))
    assert res.n_queries == len(expected)
    assert res.n_queries_without_relevant == 20 - len(expected)
    assert res.map == pytest.approx(np.mean(expected))
    assert res.mu_ap == pytest.approx(average_precision_score(relevant[mask], scores[mask]))


def test_empty_and_malformed_input_raise() -> None:
    with pytest.raises(ValueError, match="empty"):
        retrieval_metrics(np.zeros((0, 5)), np.zeros((0, 5), dtype=bool))
    with pytest.raises(ValueError, match="empty"):
        micro_ap(np.zeros((3, 0)), np.zeros((3, 0), dtype=bool))
    with pytest.raises(ValueError, match="empty"):
        pairwise_prf(np.zeros((0, 0)), np.zeros((0, 0), dtype=bool), 0.5)
    with pytest.raises(ValueError, match="2-D"):
        rank(np.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(SCORES, RELEVANT[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[0.1, np.nan]]), np.array([[True, False]]))
    with pytest.raises(ValueError, match="duplicates"):
        retrieval_metrics(SCORES, RELEVANT, ks=(1, 1))
    with pytest.raises(ValueError, match="no valid"):
        pr_curve(SCORES, RELEVANT, mask=np.zeros_like(RELEVANT))


# --------------------------------------------------------------------------- pairwise


def test_micro_ap_hand_computed() -> None:
    # pooled and sorted: 0.9T 0.8F 0.6T 0.5F 0.2T 0.1F ; 3 relevant pairs
    # precision at the relevant ones: 1/1, 2/3, 3/5 -> µAP = (1 + 2/3 + 3/5) / 3 = 34/45
    assert micro_ap(SCORES, RELEVANT) == pytest.approx(34 / 45)
    # masking the 0.8 false positive: 0.9T 0.6T 0.5F 0.2T 0.1F -> (1 + 1 + 3/4) / 3 = 11/12
    mask = np.array([[True, True, True], [False, True, True]])
    assert micro_ap(SCORES, RELEVANT, mask) == pytest.approx(11 / 12)


def test_pairwise_prf_hand_computed() -> None:
    # threshold 0.55 -> predicted: 0.9T 0.8F 0.6T ; missed: 0.2T
    r = pairwise_prf(SCORES, RELEVANT, 0.55)
    assert (r.tp, r.fp, r.fn) == (2, 1, 1)
    assert r.precision == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert r.recall == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert r.f1 == pytest.approx(2 / 3)
    # score >= threshold: 0.9 itself is predicted positive -> tp 1, fp 0, fn 2
    r = pairwise_prf(SCORES, RELEVANT, 0.9)
    assert (r.precision, r.recall) == pytest.approx((1.0, 1 / 3))
    assert r.f1 == pytest.approx(0.5)  # 2 * 1 * 1/3 / (4/3)
    # no predicted positives: precision 0 (zero_division=0), recall 0, F1 0
    r = pairwise_prf(SCORES, RELEVANT, 1.0)
    assert r == PairwiseResult(1.0, 0.0, 0.0, 0.0, 0, 0, 3)


def test_pr_curve_and_best_threshold() -> None:
    curve = pr_curve(SCORES, RELEVANT)
    assert list(curve.columns[:4]) == ["threshold", "precision", "recall", "f1"]
    assert curve["threshold"].tolist() == [0.9, 0.8, 0.6, 0.5, 0.2, 0.1]
    # F1 by threshold: 0.9: P1 R1/3 -> 0.5 ; 0.8: P1/2 R1/3 -> 0.4 ; 0.6: 2/3 2/3 -> 2/3
    # 0.5: P1/2 R2/3 -> 4/7 ; 0.2: P3/5 R1 -> 0.75 ; 0.1: P1/2 R1 -> 2/3
    assert curve["f1"].tolist() == pytest.approx([0.5, 0.4, 2 / 3, 4 / 7, 0.75, 2 / 3])
    assert best_threshold(SCORES, RELEVANT) == 0.2
    # each row agrees with pairwise_prf at that threshold
    for row in curve.itertuples():
        r = pairwise_prf(SCORES, RELEVANT, row.threshold)
        assert (r.precision, r.recall, r.f1) == pytest.approx((row.precision, row.recall, row.f1))
        assert (r.tp, r.fp, r.fn) == (row.tp, row.fp, row.fn)


def test_pr_curve_ties_are_one_threshold_and_best_threshold_prefers_highest() -> None:
    scores = np.array([[0.7, 0.7, 0.3, 0.3]])
    relevant = np.array([[True, False, True, False]])
    curve = pr_curve(scores, relevant)
    # 0.7: tp1 fp1 -> P 1/2 R 1/2 F1 1/2 ; 0.3: tp2 fp2 -> P 1/2 R 1 F1 2/3
    assert curve["threshold"].tolist() == [0.7, 0.3]
    assert curve["f1"].tolist() == pytest.approx([0.5, 2 / 3])
    # equal F1 (1.0 at 0.9 and 0.8): the higher threshold wins
    scores = np.array([[0.9, 0.8, 0.1]])
    relevant = np.array([[True, False, False]])
    # 0.9: P1 R1 F1 1 ; 0.8: P1/2 R1 F1 2/3 -> 0.9
    assert best_threshold(scores, relevant) == 0.9
    relevant = np.array([[True, True, False]])
    # 0.9: P1 R1/2 F1 2/3 ; 0.8: P1 R1 F1 1 ; 0.1: P2/3 R1 F1 0.8 -> 0.8
    assert best_threshold(scores, relevant) == 0.8


def test_micro_ap_consistent_with_pr_curve_random() -> None:
    rng = np.random.default_rng(1)
    scores = np.round(rng.random((8, 12)), 1)  # rounding makes many ties
    relevant = rng.random((8, 12)) < 0.3
    curve = pr_curve(scores, relevant)
    recall = np.r_[0.0, curve["recall"].to_numpy()]
    ap = float((np.diff(recall) * curve["precision"].to_numpy()).sum())  # sum dR * P
    assert micro_ap(scores, relevant) == pytest.approx(ap)


# --------------------------------------------------------------------------- classification


def test_classification_metrics_hand_computed() -> None:
    y_true = [0, 0, 1]
    y_pred = [0, 1, 1]
    m = classification_metrics(y_true, y_pred, n_classes=5)
    # labels {0, 1} only (classes 2-4 absent from both are ignored)
    # class 0: P 1/1 R 1/2 F1 2/3 ; class 1: P 1/2 R 1/1 F1 2/3
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["macro_precision"] == pytest.approx(0.75)
    assert m["macro_recall"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx(2 / 3)


def test_classification_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 10, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 12, 200))
    m = classification_metrics(y_true, y_pred)
    labels = np.union1d(y_true, y_pred)
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    assert m["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert (m["macro_precision"], m["macro_recall"], m["macro_f1"]) == pytest.approx((p, r, f))


def test_classification_metrics_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], [])
    with pytest.raises(ValueError, match="samples"):
        classification_metrics([0, 1], [0])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        classification_metrics([0, 1], [0, 3], n_classes=3)


def test_ranked_lists_count_the_relevant_images_they_miss():
    """A top-3 list of a query with 3 relevant images, 2 of them listed (hand-computed):
    the third is never retrieved, so AP and µAP are truncated and it is a false negative."""
    scores = np.array([[0.9, 0.8, 0.7]])
    rel = np.array([[True, False, True]])
    n_rel = np.array([3])
    m = M.retrieval_metrics(scores, rel, ks=(1, 3), n_relevant=n_rel)
    assert m.map == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert m.recall_at_k[3] == pytest.approx(2 / 3) and m.precision_at_k[1] == 1.0
    assert m.mu_ap == pytest.approx((1 + 2 / 3) / 2 * 2 / 3)
    pw = M.pairwise_prf(scores, rel, 0.75, n_relevant=n_rel)
    assert (pw.tp, pw.fp, pw.fn) == (1, 1, 2) and pw.f1 == pytest.approx(0.4)
    curve = M.pr_curve(scores, rel, n_relevant=n_rel)
    assert curve["recall"].iloc[-1] == pytest.approx(2 / 3)
    # whole lists (n_relevant = those listed): the matrix figures
    full = M.retrieval_metrics(scores, rel, ks=(1,), n_relevant=np.array([2]))
    assert full.map == M.retrieval_metrics(scores, rel, ks=(1,)).map == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="n_relevant"):
        M.retrieval_metrics(scores, rel, n_relevant=np.array([1]))
