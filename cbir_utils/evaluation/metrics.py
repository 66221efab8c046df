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
from dataclasses import asdict, dataclass, field
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
    """Column indices per row: valid candidates by descending score (ties by column), then
    the excluded ones in column order."""
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
    """AP of 0/1 relevance in rank order: the sum of precision@r at the relevant ranks r over
    ``n_relevant`` (default: those listed; missing ones add 0). NaN without relevant item."""
    rel = _as_relevance(ranked_relevance)
    n_rel = _n_relevant(rel, n_relevant)
    if n_rel == 0:
        return math.nan
    hits = np.cumsum(rel)
    ranks = np.arange(1, rel.size + 1)
    return float((hits[rel] / ranks[rel]).sum() / n_rel)


def precision_at_k(ranked_relevance: np.ndarray, k: int) -> float:
    """Share of the top ``k`` that is relevant (always over ``k``, even for a shorter list)."""
    rel = _as_relevance(ranked_relevance)
    k = _check_k(k)
    return float(rel[:k].sum()) / k


def recall_at_k(ranked_relevance: np.ndarray, k: int, n_relevant: int | None = None) -> float:
    """Share of the ``n_relevant`` items (default: those listed) in the top ``k``; NaN if none."""
    rel = _as_relevance(ranked_relevance)
    k = _check_k(k)
    n_rel = _n_relevant(rel, n_relevant)
    if n_rel == 0:
        return math.nan
    return float(rel[:k].sum()) / n_rel


def ndcg_at_k(ranked_relevance: np.ndarray, k: int, n_relevant: int | None = None) -> float:
    """Binary nDCG@k: the sum of rel_i / log2(i + 1) over ranks i <= k (from 1), over that of
    ``min(k, n_relevant)`` relevant items at the top. NaN without relevant item."""
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
    """Ranking metrics, means over the ``n_queries`` queries with a relevant candidate (NaN if
    none); ``per_query`` has a row for every query (``ap``, ``P@k``, ``R@k``, ``nDCG@k``)."""

    map: float
    precision_at_k: dict[int, float]
    recall_at_k: dict[int, float]
    ndcg_at_k: dict[int, float]
    mu_ap: float
    n_queries: int
    n_queries_without_relevant: int
    per_query: pd.DataFrame = field(repr=False)

    def to_dict(self) -> dict[str, float | int | None]:
        """``{"mAP", "P@k"..., "R@k"..., "nDCG@k"..., "muAP", "n_queries"...}``, NaN as None."""
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
    """mAP, P@k, R@k, nDCG@k (``ks``) and µAP of a score matrix or of ranked lists."""
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
    """Micro AP (DISC21): the AP of all valid pairs pooled and sorted globally, tied scores
    as one threshold; with ranked lists, scaled by found / total. NaN without relevant pair."""
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
        return asdict(self)


def pairwise_prf(
    scores: np.ndarray,
    relevant: np.ndarray,
    threshold: float,
    mask: np.ndarray | None = None,
    n_relevant: np.ndarray | None = None,
) -> PairwiseResult:
    """Pairwise precision, recall and F1 of ``score >= threshold`` over the valid cells, as
    in the original study (choose the threshold on validation data)."""
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
    """:func:`pairwise_prf` at every distinct valid score, thresholds descending: columns
    ``threshold, precision, recall, f1, tp, fp, fn``."""
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
    """The valid score that maximises pairwise F1 (the highest among ties), applied as
    ``score >= threshold``; fit it on validation data."""
    curve = pr_curve(scores, relevant, mask, n_relevant)
    if int(curve["tp"].iloc[-1]) == 0:
        raise InputError("no relevant valid pair: the F1-maximising threshold is undefined")
    return float(curve["threshold"].iloc[int(np.argmax(curve["f1"].to_numpy()))])


# --------------------------------------------------------------------------- classification


def classification_metrics(
    y_true: np.ndarray | Sequence[int],
    y_pred: np.ndarray | Sequence[int],
    n_classes: int | None = None,
) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 (``zero_division=0``) over the labels present
    in ``y_true`` or ``y_pred`` only: classes absent from a small validation split would add
    zeros that say nothing of the model. ``n_classes`` only checks the labels' range."""
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
