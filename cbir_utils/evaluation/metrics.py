"""Retrieval and classification metrics for near-duplicate press-photograph search.

Conventions shared by every function taking a score matrix:

* ``scores``: float array ``(n_queries, n_db)`` of similarities, higher = more similar.
* ``relevant``: bool array of the same shape, True where query and candidate show the same
  scene (0/1 integers are accepted too).
* ``mask``: optional bool array of the same shape, False = not a candidate (e.g. the query
  itself). A score of ``-inf`` also marks a cell as not a candidate, so callers may exclude the
  query either way. The *valid* cells are those with ``mask`` True and a score other than
  ``-inf``; every other cell is ignored entirely, including its ``relevant`` flag. Valid scores
  must be finite (NaN or ``+inf`` on a valid cell raises ``ValueError``).
* Ranking is by descending score, ties broken by ascending column index (stable sort), so every
  result is deterministic.
* Pairwise metrics (``micro_ap``, ``pairwise_prf``, ``pr_curve``, ``best_threshold``) count
  matrix cells: when both images of a pair are queries, ``(i, j)`` and ``(j, i)`` are two pairs.
* Undefined ratios (0/0) are 0.0, as sklearn's ``zero_division=0``; per-query ranking metrics
  of a query with no relevant candidate are NaN and such queries are left out of the means.
* **Ranked lists** work as matrices: row ``i`` holds query ``i``'s top-k candidates' scores
  (``-inf`` where a list is shorter), ``relevant`` their relevance, and ``n_relevant``
  (``(n_queries,)``) each query's relevant candidates in the whole collection, listed or
  not. Relevant candidates beyond a list count as never retrieved (AP and µAP truncated,
  recall and pairwise false negatives complete); with whole lists the figures are those of
  the full matrix. Memory is ``O(n_queries k)``, never ``n_queries x N``.

See ``DOMAIN.md``, "How retrieval quality is measured".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    precision_recall_fscore_support,
)

from cbir_utils.errors import InputError

__all__ = [
    "PairwiseResult",
    "RetrievalMetrics",
    "average_precision",
    "best_threshold",
    "classification_metrics",
    "micro_ap",
    "ndcg_at_k",
    "pairwise_prf",
    "pr_curve",
    "precision_at_k",
    "rank",
    "recall_at_k",
    "retrieval_metrics",
]


# --------------------------------------------------------------------------- validation


def _as_scores(scores: np.ndarray) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"scores must be a 2-D (n_queries, n_db) array, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(
            f"scores is empty (shape {arr.shape}): need at least one query and one candidate"
        )
    return arr


def _as_bool(name: str, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != shape:
        raise InputError(f"{name} has shape {arr.shape}, expected {shape} (same as scores)")
    if arr.dtype != np.bool_:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise InputError(f"{name} must be boolean or 0/1, got values outside {{0, 1}}")
        arr = arr.astype(bool)
    return arr


def _valid_cells(scores: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Return the bool matrix of valid candidates; check that their scores are finite."""
    valid = scores != -np.inf
    if mask is not None:
        valid &= _as_bool("mask", mask, scores.shape)
    if not np.isfinite(scores[valid]).all():
        raise InputError(
            "scores contain NaN or +inf on valid candidates; use mask or -inf to exclude"
        )
    return valid


def _prepare(
    scores: np.ndarray, relevant: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = _as_scores(scores)
    rel = _as_bool("relevant", relevant, s.shape)
    return s, rel, _valid_cells(s, mask)


def _as_relevance(ranked_relevance: np.ndarray) -> np.ndarray:
    arr = np.asarray(ranked_relevance)
    if arr.ndim != 1:
        raise InputError(f"ranked_relevance must be 1-D, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise InputError("ranked_relevance must contain only 0/1 (or bool) values")
    return arr.astype(bool)


def _n_relevant(rel: np.ndarray, n_relevant: int | None) -> int:
    found = int(rel.sum())
    if n_relevant is None:
        return found
    if n_relevant < found:
        raise InputError(
            f"n_relevant={n_relevant} is smaller than the {found} relevant items in the ranking"
        )
    return int(n_relevant)


def _totals(rel: np.ndarray, valid: np.ndarray, n_relevant) -> np.ndarray:
    """Per query, its relevant candidates: those of the row, or ``n_relevant`` (lists)."""
    found = (rel & valid).sum(axis=1)
    if n_relevant is None:
        return found
    total = np.asarray(n_relevant, dtype=np.int64).reshape(-1)
    if total.shape != found.shape:
        raise InputError(f"n_relevant has {total.size} entries for {found.size} queries")
    if (total < found).any():
        raise InputError("n_relevant is smaller than the relevant candidates listed for a query")
    return total


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _f1(precision: float, recall: float) -> float:
    return _safe_div(2.0 * precision * recall, precision + recall)


# --------------------------------------------------------------------------- ranking


def rank(scores: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Rank the database for every query.

    Args:
        scores: ``(n_queries, n_db)`` similarities.
        mask: Optional bool matrix, False = not a candidate.

    Returns:
        Int array ``(n_queries, n_db)`` of column indices per row: valid candidates first by
        descending score (ties by ascending column index), then the excluded candidates (mask
        False or score ``-inf``) in column order. Row ``i`` has ``valid[i].sum()`` valid entries.
    """
    s = _as_scores(scores)
    valid = _valid_cells(s, mask)
    key = np.where(valid, -s, np.inf)  # valid keys are finite, so excluded sort last
    return np.argsort(key, axis=1, kind="stable")


def _ranked_rows(
    scores: np.ndarray, relevant: np.ndarray, valid: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query: (valid candidate indices in rank order, their relevance)."""
    order = rank(scores, valid)
    n_valid = valid.sum(axis=1)
    rows = []
    for i in range(scores.shape[0]):
        idx = order[i, : n_valid[i]]
        rows.append((idx, relevant[i, idx]))
    return rows


# --------------------------------------------------------------------------- per-query metrics


def average_precision(ranked_relevance: np.ndarray, n_relevant: int | None = None) -> float:
    """Average precision of one ranked list.

    AP = (sum of precision@r over the ranks r of relevant items) / ``n_relevant``. Relevant
    items missing from the list (``n_relevant`` larger than its relevant count) add 0.

    Args:
        ranked_relevance: 0/1 relevance of the results in rank order.
        n_relevant: Total relevant items for the query; defaults to ``sum(ranked_relevance)``.

    Returns:
        AP in [0, 1], or NaN when the query has no relevant item.
    """
    rel = _as_relevance(ranked_relevance)
    n_rel = _n_relevant(rel, n_relevant)
    if n_rel == 0:
        return math.nan
    hits = np.cumsum(rel)
    ranks = np.arange(1, rel.size + 1)
    return float((hits[rel] / ranks[rel]).sum() / n_rel)


def precision_at_k(ranked_relevance: np.ndarray, k: int) -> float:
    """Share of the top ``k`` that is relevant; ranks beyond the list count as non-relevant.

    Args:
        ranked_relevance: 0/1 relevance in rank order.
        k: Cut-off (>= 1). The denominator is always ``k``, even if the list is shorter.

    Returns:
        P@k in [0, 1].
    """
    rel = _as_relevance(ranked_relevance)
    k = _check_k(k)
    return float(rel[:k].sum()) / k


def recall_at_k(ranked_relevance: np.ndarray, k: int, n_relevant: int | None = None) -> float:
    """Share of the relevant items found in the top ``k``.

    Args:
        ranked_relevance: 0/1 relevance in rank order.
        k: Cut-off (>= 1).
        n_relevant: Total relevant items; defaults to ``sum(ranked_relevance)``.

    Returns:
        R@k in [0, 1], or NaN when the query has no relevant item.
    """
    rel = _as_relevance(ranked_relevance)
    k = _check_k(k)
    n_rel = _n_relevant(rel, n_relevant)
    if n_rel == 0:
        return math.nan
    return float(rel[:k].sum()) / n_rel


def ndcg_at_k(ranked_relevance: np.ndarray, k: int, n_relevant: int | None = None) -> float:
    """Binary nDCG@k = DCG@k / IDCG@k.

    DCG@k = sum over ranks i <= k of rel_i / log2(i + 1) (i from 1); IDCG@k is the DCG of
    ``min(k, n_relevant)`` relevant items at the top.

    Args:
        ranked_relevance: 0/1 relevance in rank order.
        k: Cut-off (>= 1).
        n_relevant: Total relevant items; defaults to ``sum(ranked_relevance)``.

    Returns:
        nDCG@k in [0, 1], or NaN when the query has no relevant item.
    """
    rel = _as_relevance(ranked_relevance)
    k = _check_k(k)
    n_rel = _n_relevant(rel, n_relevant)
    if n_rel == 0:
        return math.nan
    top = rel[:k]
    dcg = float((top / np.log2(np.arange(2, top.size + 2))).sum())
    idcg = float((1.0 / np.log2(np.arange(2, min(k, n_rel) + 2))).sum())
    return dcg / idcg


# --------------------------------------------------------------------------- ranking metrics


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    out = tuple(_check_k(k) for k in ks)
    if len(set(out)) != len(out):
        raise InputError(f"ks contains duplicates: {out}")
    return out


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass
class RetrievalMetrics:
    """Ranking metrics over all queries (each image in turn queries the rest).

    Means are over the ``n_queries`` queries with at least one relevant candidate; the
    ``n_queries_without_relevant`` others are only counted. Means are NaN if no query counts.

    Attributes:
        map: Mean average precision.
        precision_at_k: ``{k: mean P@k}``.
        recall_at_k: ``{k: mean R@k}``.
        ndcg_at_k: ``{k: mean nDCG@k}``.
        mu_ap: Micro AP over all valid pairs (see ``micro_ap``), NaN without relevant pairs.
        n_queries: Queries evaluated (with at least one relevant candidate).
        n_queries_without_relevant: Queries excluded from the means.
        per_query: One row per query (all of them): ``query``, ``n_candidates``,
            ``n_relevant``, ``ap``, ``P@k``, ``R@k``, ``nDCG@k``; NaN metrics for queries
            without relevant candidates.
    """

    map: float
    precision_at_k: dict[int, float]
    recall_at_k: dict[int, float]
    ndcg_at_k: dict[int, float]
    mu_ap: float
    n_queries: int
    n_queries_without_relevant: int
    per_query: pd.DataFrame = field(repr=False)

    def to_dict(self) -> dict[str, float | int | None]:
        """Flat JSON-serialisable summary; NaN becomes None.

        Returns:
            ``{"mAP", "P@k"..., "R@k"..., "nDCG@k"..., "muAP", "n_queries",
            "n_queries_without_relevant"}``.
        """
        out: dict[str, float | int | None] = {"mAP": _nan_to_none(self.map)}
        for prefix, values in (
            ("P", self.precision_at_k),
            ("R", self.recall_at_k),
            ("nDCG", self.ndcg_at_k),
        ):
            for k, v in values.items():
                out[f"{prefix}@{k}"] = _nan_to_none(v)
        out["muAP"] = _nan_to_none(self.mu_ap)
        out["n_queries"] = int(self.n_queries)
        out["n_queries_without_relevant"] = int(self.n_queries_without_relevant)
        return out


def retrieval_metrics(
    scores: np.ndarray,
    relevant: np.ndarray,
    mask: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10),
    n_relevant: np.ndarray | None = None,
) -> RetrievalMetrics:
    """Compute mAP, P@k, R@k, nDCG@k and µAP for a score matrix or ranked lists.

    Each row is ranked over its valid candidates (see ``rank``); its relevant count is the number
    of valid relevant cells, so a masked query never counts as its own match.

    Args:
        scores: ``(n_queries, n_db)`` similarities, or ranked lists (module docstring).
        relevant: Bool matrix, True = same scene.
        mask: Optional bool matrix, False = not a candidate.
        ks: Cut-offs for P@k, R@k and nDCG@k.
        n_relevant: Per query, its relevant candidates in the collection (ranked lists).

    Returns:
        A ``RetrievalMetrics``.

    Raises:
        ValueError: On empty or mis-shaped input, NaN/+inf valid scores, or bad ``ks``.
    """
    s, rel, valid = _prepare(scores, relevant, mask)
    ks = _check_ks(ks)
    totals = _totals(rel, valid, n_relevant)
    records = []
    for i, (idx, ranked) in enumerate(_ranked_rows(s, rel, valid)):
        n_rel = int(totals[i])
        row: dict[str, Any] = {"query": i, "n_candidates": int(idx.size), "n_relevant": n_rel}
        row["ap"] = average_precision(ranked, n_rel)
        for k in ks:
            row[f"P@{k}"] = precision_at_k(ranked, k) if n_rel else math.nan
        for k in ks:
            row[f"R@{k}"] = recall_at_k(ranked, k, n_rel)
        for k in ks:
            row[f"nDCG@{k}"] = ndcg_at_k(ranked, k, n_rel)
        records.append(row)
    per_query = pd.DataFrame.from_records(records)
    evaluated = per_query[per_query["n_relevant"] > 0]

    def mean(col: str) -> float:
        return float(evaluated[col].mean()) if len(evaluated) else math.nan

    return RetrievalMetrics(
        map=mean("ap"),
        precision_at_k={k: mean(f"P@{k}") for k in ks},
        recall_at_k={k: mean(f"R@{k}") for k in ks},
        ndcg_at_k={k: mean(f"nDCG@{k}") for k in ks},
        mu_ap=micro_ap(s, rel, valid, totals),
        n_queries=len(evaluated),
        n_queries_without_relevant=len(per_query) - len(evaluated),
        per_query=per_query,
    )


def micro_ap(
    scores: np.ndarray,
    relevant: np.ndarray,
    mask: np.ndarray | None = None,
    n_relevant: np.ndarray | None = None,
) -> float:
    """Micro average precision (µAP, DISC21 copy-detection protocol).

    Every valid (query, candidate, score) triple is pooled and sorted globally; AP of that one
    precision-recall curve, via ``sklearn.metrics.average_precision_score`` (tied scores enter
    together, as one threshold). Queries without relevant candidates still add false positives.

    Args:
        scores: ``(n_queries, n_db)`` similarities.
        relevant: Bool matrix, True = same scene.
        mask: Optional bool matrix, False = not a candidate.
        n_relevant: Per query, its relevant candidates in the collection (ranked lists:
            those beyond the lists are never retrieved, so the AP scales by found / total).

    Returns:
        µAP in [0, 1], or NaN when no pair is relevant.
    """
    s, rel, valid = _prepare(scores, relevant, mask)
    y_true = rel[valid]
    total = int(_totals(rel, valid, n_relevant).sum())
    if not total:
        return math.nan
    if not y_true.any():
        return 0.0
    return float(average_precision_score(y_true, s[valid])) * int(y_true.sum()) / total


# --------------------------------------------------------------------------- pairwise metrics


@dataclass(frozen=True)
class PairwiseResult:
    """Pairwise detection counts and rates at one threshold (0/0 ratios are 0.0)."""

    threshold: float
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int

    def to_dict(self) -> dict[str, float | int]:
        """Return the fields as a plain dict."""
        return {
            "threshold": float(self.threshold),
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


def pairwise_prf(
    scores: np.ndarray,
    relevant: np.ndarray,
    threshold: float,
    mask: np.ndarray | None = None,
    n_relevant: np.ndarray | None = None,
) -> PairwiseResult:
    """Pairwise precision, recall and F1 at a threshold, as in the original study.

    Over all valid (query, candidate) cells, predicted positive = ``score >= threshold``.
    precision = tp / (tp + fp), recall = tp / (tp + fn), F1 = 2PR / (P + R); each is 0.0 when
    its denominator is 0 (no predicted positives, no relevant pairs).

    Args:
        scores: ``(n_queries, n_db)`` similarities.
        relevant: Bool matrix, True = same scene.
        threshold: Decision threshold (choose it on validation data, never on test).
        mask: Optional bool matrix, False = not a candidate.
        n_relevant: Per query, its relevant candidates in the collection (ranked lists:
            those beyond the lists are false negatives).

    Returns:
        A ``PairwiseResult``.
    """
    s, rel, valid = _prepare(scores, relevant, mask)
    pred = s[valid] >= threshold
    truth = rel[valid]
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int(_totals(rel, valid, n_relevant).sum()) - tp
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    return PairwiseResult(float(threshold), precision, recall, _f1(precision, recall), tp, fp, fn)


def pr_curve(
    scores: np.ndarray,
    relevant: np.ndarray,
    mask: np.ndarray | None = None,
    n_relevant: np.ndarray | None = None,
) -> pd.DataFrame:
    """Pairwise precision/recall/F1 at every distinct valid score used as threshold.

    Row ``t`` equals ``pairwise_prf(scores, relevant, t, mask)`` (same 0/0 = 0.0 rule).

    Args:
        scores: ``(n_queries, n_db)`` similarities.
        relevant: Bool matrix, True = same scene.
        mask: Optional bool matrix, False = not a candidate.
        n_relevant: Per query, its relevant candidates in the collection (ranked lists).

    Returns:
        DataFrame with columns ``threshold, precision, recall, f1, tp, fp, fn``, thresholds
        descending (recall non-decreasing down the rows).

    Raises:
        ValueError: When there is no valid pair.
    """
    s, rel, valid = _prepare(scores, relevant, mask)
    n_pos = int(_totals(rel, valid, n_relevant).sum())
    flat, truth = s[valid], rel[valid]
    if flat.size == 0:
        raise InputError("no valid (query, candidate) pair: mask excludes everything")
    order = np.argsort(-flat, kind="stable")
    flat, truth = flat[order], truth[order]
    # last index of each run of equal scores: predicted positives at that threshold
    last = np.r_[np.nonzero(np.diff(flat))[0], flat.size - 1]
    tp = np.cumsum(truth)[last]
    fp = (last + 1) - tp
    fn = n_pos - tp
    precision = tp / (tp + fp)  # tp + fp >= 1 at every distinct score
    recall = tp / n_pos if n_pos else np.zeros(tp.size)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(tp.size), where=denom > 0)
    return pd.DataFrame(
        {
            "threshold": flat[last],
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "tp": tp.astype(np.int64),
            "fp": fp.astype(np.int64),
            "fn": fn.astype(np.int64),
        }
    )


def best_threshold(
    scores: np.ndarray,
    relevant: np.ndarray,
    mask: np.ndarray | None = None,
    n_relevant: np.ndarray | None = None,
) -> float:
    """Threshold maximising pairwise F1 (fit on validation data, then apply to test).

    Candidates are the distinct valid scores (see ``pr_curve``); among equal F1 the highest
    threshold wins. Apply it with ``score >= threshold``.

    Args:
        scores: ``(n_queries, n_db)`` similarities.
        relevant: Bool matrix, True = same scene.
        mask: Optional bool matrix, False = not a candidate.
        n_relevant: Per query, its relevant candidates in the collection (ranked lists).

    Returns:
        The chosen threshold (one of the valid scores).

    Raises:
        ValueError: When no valid pair is relevant (F1 is 0 at every threshold).
    """
    curve = pr_curve(scores, relevant, mask, n_relevant)
    if int(curve["tp"].iloc[-1]) == 0:
        raise InputError("no relevant valid pair: the F1-maximising threshold is undefined")
    return float(curve["threshold"].iloc[int(np.argmax(curve["f1"].to_numpy()))])


# --------------------------------------------------------------------------- top-k table


# --------------------------------------------------------------------------- classification


def classification_metrics(
    y_true: np.ndarray | Sequence[int],
    y_pred: np.ndarray | Sequence[int],
    n_classes: int | None = None,
) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 of a classifier (e.g. per fine-tuning epoch).

    Macro averages use sklearn with ``zero_division=0`` over the labels present in
    ``y_true`` or ``y_pred`` only: classes absent from both (common in a small validation split
    of an imbalanced collection) would otherwise add zeros that say nothing about the model.

    Args:
        y_true: True class indices, 1-D.
        y_pred: Predicted class indices, same length.
        n_classes: If given, every label must lie in ``[0, n_classes)``; used for checking only.

    Returns:
        ``{"accuracy", "macro_precision", "macro_recall", "macro_f1"}`` as floats.

    Raises:
        ValueError: On empty, mis-shaped or out-of-range labels.
    """
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim != 1 or p.ndim != 1:
        raise InputError(f"y_true and y_pred must be 1-D, got shapes {t.shape} and {p.shape}")
    if t.size == 0:
        raise InputError("y_true is empty: need at least one sample")
    if t.shape != p.shape:
        raise InputError(f"y_true has {t.size} samples but y_pred has {p.size}")
    labels = np.union1d(t, p)
    if n_classes is not None and (labels.min() < 0 or labels.max() >= n_classes):
        raise InputError(f"labels must lie in [0, {n_classes}), got {labels.min()}..{labels.max()}")
    precision, recall, f1, _ = precision_recall_fscore_support(
        t, p, labels=labels, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(t, p)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
    }
