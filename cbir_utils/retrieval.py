"""Ranking by cosine similarity, top-k tables and the evaluation protocols.

Descriptors are L2-normalised, so the dot product is the cosine similarity. Each
query is compared with the whole collection, itself excluded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import metrics as M
from .data import UNLABELLED
from .errors import InputError

PROTOCOLS = {
    "all": "every labelled image is a query (no training involved)",
    "study": "queries are test images of scenes seen in fine-tuning (the original protocol)",
    "disjoint": "queries are images of scenes held out of fine-tuning (scene-disjoint)",
}


def cosine_scores(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit-norm rows: ``(n_queries, n_db)``."""
    return np.asarray(queries, dtype=np.float32) @ np.asarray(database, dtype=np.float32).T


def self_mask(query_idx: Sequence[int], n_db: int) -> np.ndarray:
    """Candidate mask that excludes each query from its own database row."""
    q = np.asarray(query_idx, dtype=int)
    mask = np.ones((len(q), n_db), dtype=bool)
    mask[np.arange(len(q)), q] = False
    return mask


def relevance(scenes_q: Sequence[str], scenes_db: Sequence[str]) -> np.ndarray:
    """``relevant[i, j]``: query i and candidate j show the same (labelled) scene."""
    q = np.asarray(scenes_q, dtype=object)[:, None]
    d = np.asarray(scenes_db, dtype=object)[None, :]
    return (q == d) & (q != UNLABELLED)


def top_k(
    scores: np.ndarray, k: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` best candidates per row (ties: lower index first)."""
    s = np.where(mask, scores, -np.inf) if mask is not None else scores
    k = min(k, s.shape[1] - (1 if mask is not None else 0)) if s.shape[1] else 0
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def nearest(
    desc: np.ndarray, query_idx: Sequence[int], k: int, method: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` candidates of each query in the whole collection, itself excluded.

    Unlike :func:`evaluate`, which scores every query against every image, this never
    builds a ``queries x N`` matrix: exact chunked search below
    :data:`cbir_utils.search.EXACT_MAX` images, a FAISS IVF index above (``method``
    forces one of :data:`cbir_utils.search.METHODS`). For large collections.

    Returns:
        ``(indices, scores)``, each ``(len(query_idx), min(k, N - 1))``, best first.
    """
    from .search import build_index

    q = np.asarray(query_idx, dtype=int)
    nb = build_index(desc, method).search(np.asarray(desc[q], dtype=np.float32), k, exclude=q)
    return nb.indices, nb.scores


def topk_table(
    relpaths: Sequence[str],
    scenes: Sequence[str],
    query_idx: Sequence[int],
    scores: np.ndarray,
    k: int,
    mask: np.ndarray | None = None,
    items: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Long table ``query, rank, candidate, score, relevant`` of each query's top-k.

    With ``items`` (the collection's, with ``relpath`` and metadata columns) each row also
    gets the candidate's metadata (periodical, date, page...).
    """
    relpaths = np.asarray(relpaths, dtype=object)
    scenes = np.asarray(scenes, dtype=object)
    idx, val = top_k(scores, k, mask)
    q = np.repeat(np.asarray(query_idx, dtype=int), idx.shape[1])
    c = idx.ravel()
    table = pd.DataFrame(
        {
            "query": relpaths[q],
            "rank": np.tile(np.arange(1, idx.shape[1] + 1), len(idx)),
            "candidate": relpaths[c],
            "score": val.ravel().round(6),
            "relevant": (scenes[q] == scenes[c]) & (scenes[q] != UNLABELLED),
        }
    )
    if items is None:
        return table
    from .provenance import add_columns

    return add_columns(table, items, on="candidate")


def protocol_queries(split: pd.DataFrame, protocol: str) -> np.ndarray:
    """Indices of the query images of a protocol (see :data:`PROTOCOLS`)."""
    labelled = split["scene"].to_numpy(dtype=object) != UNLABELLED
    s = split["split"].to_numpy(dtype=object)
    if protocol == "all":
        sel = labelled
    elif protocol == "study":
        sel = labelled & (s == "test")
    elif protocol == "disjoint":
        sel = labelled & (s == "heldout")
    elif protocol == "val":
        sel = labelled & (s == "val")
    else:
        raise InputError(f"Unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}.")
    return np.flatnonzero(sel)


@dataclass
class Evaluation:
    """Retrieval quality of one descriptor set under one protocol."""

    protocol: str
    ranking: M.RetrievalMetrics
    pairwise: M.PairwiseResult
    pr_curve: pd.DataFrame
    scores: np.ndarray
    mask: np.ndarray
    query_idx: np.ndarray

    def to_dict(self) -> dict:
        """Flat JSON-serialisable summary."""
        d = {"protocol": self.protocol, **self.ranking.to_dict()}
        d.update(
            {
                "threshold": float(self.pairwise.threshold),
                "pair_precision": float(self.pairwise.precision),
                "pair_recall": float(self.pairwise.recall),
                "pair_f1": float(self.pairwise.f1),
            }
        )
        return d


def _scores_for(desc: np.ndarray, scenes: np.ndarray, query_idx: np.ndarray):
    scores = cosine_scores(desc[query_idx], desc)
    mask = self_mask(query_idx, len(desc))
    rel = relevance(scenes[query_idx], scenes)
    return scores, mask, rel


def choose_threshold(desc: np.ndarray, scenes: Sequence[str], val_idx: Sequence[int]) -> float:
    """Cosine threshold maximising pairwise F1 with the validation images as queries."""
    scenes = np.asarray(scenes, dtype=object)
    val_idx = np.asarray(val_idx, dtype=int)
    if len(val_idx) == 0:
        raise InputError("No validation queries to choose a threshold on.")
    scores, mask, rel = _scores_for(desc, scenes, val_idx)
    return float(M.best_threshold(scores, rel, mask))


def evaluate(
    desc: np.ndarray,
    scenes: Sequence[str],
    query_idx: Sequence[int],
    threshold: float,
    ks: Sequence[int] = (1, 5, 10),
    protocol: str = "all",
) -> Evaluation:
    """Rank the whole collection for each query and compute every metric.

    Args:
        desc: Unit-norm descriptors of the whole collection ``(N, D)``.
        scenes: Scene label of each image.
        query_idx: Rows of ``desc`` used as queries.
        threshold: Cosine threshold for the pairwise precision/recall/F1.
        ks: Cut-offs for P@k, R@k and nDCG@k.
        protocol: Name stored with the result.
    """
    scenes = np.asarray(scenes, dtype=object)
    query_idx = np.asarray(query_idx, dtype=int)
    if len(query_idx) == 0:
        raise InputError(f"Protocol {protocol!r} has no query images.")
    scores, mask, rel = _scores_for(desc, scenes, query_idx)
    return Evaluation(
        protocol=protocol,
        ranking=M.retrieval_metrics(scores, rel, mask=mask, ks=tuple(ks)),
        pairwise=M.pairwise_prf(scores, rel, threshold, mask=mask),
        pr_curve=M.pr_curve(scores, rel, mask=mask),
        scores=scores,
        mask=mask,
        query_idx=query_idx,
    )


def evaluate_protocols(
    desc: np.ndarray,
    split: pd.DataFrame,
    protocols: Sequence[str] = ("all", "study", "disjoint"),
    ks: Sequence[int] = (1, 5, 10),
    threshold: float | None = None,
) -> dict[str, Evaluation]:
    """Evaluate ``desc`` under several protocols, one threshold chosen on ``val`` for all.

    Args:
        desc: Unit-norm descriptors in the order of ``split``.
        split: Frame with ``scene`` and ``split`` columns (see :func:`data.make_split`).
        protocols: Names from :data:`PROTOCOLS`; protocols without queries are skipped.
        ks: Cut-offs.
        threshold: Fixed cosine threshold (e.g. the study's 0.88); ``None`` chooses it on
            the validation queries.
    """
    scenes = split["scene"].to_numpy(dtype=object)
    if threshold is None:
        threshold = choose_threshold(desc, scenes, protocol_queries(split, "val"))
    out = {}
    for p in protocols:
        q = protocol_queries(split, p)
        if len(q):
            out[p] = evaluate(desc, scenes, q, threshold, ks, protocol=p)
    return out


def results_table(results: dict[str, dict[str, Evaluation]]) -> pd.DataFrame:
    """One row per (method, protocol) from ``{method: {protocol: Evaluation}}``."""
    rows = [{"method": m, **ev.to_dict()} for m, per in results.items() for ev in per.values()]
    return pd.DataFrame(rows)


def best_on_validation(table: pd.DataFrame) -> str:
    """The method of a :func:`results_table` with the best validation mAP (then µAP).

    Choosing on the validation images keeps the held-out scenes for the report only.

    Raises:
        ValueError: The table has no ``val`` rows.
    """
    val = table[table["protocol"] == "val"]
    if not len(val):
        raise InputError("No validation rows to choose on (evaluate the 'val' protocol too).")
    return str(val.sort_values(["mAP", "muAP"], ascending=False, kind="stable")["method"].iloc[0])


def gallery_queries(split: pd.DataFrame, n: int, seed: int = 0) -> np.ndarray:
    """A fixed choice of ``n`` query images for gallery figures, shared by the notebooks.

    Half come from the study protocol's test images, half from the held-out scenes
    (falling back to any labelled image), one per scene, chosen by ``seed``.
    """
    rng = np.random.default_rng(seed)
    scenes = split["scene"].to_numpy(dtype=object)
    picked: list[int] = []
    pools = [
        protocol_queries(split, "study"),
        protocol_queries(split, "disjoint"),
        protocol_queries(split, "all"),
    ]
    quotas = [n - n // 2, n // 2, n]
    for pool, quota in zip(pools, quotas):
        taken = 0
        for i in rng.permutation(pool):
            if len(picked) >= n or taken >= quota:
                break
            if scenes[i] not in {scenes[j] for j in picked}:
                picked.append(int(i))
                taken += 1
    return np.array(picked[:n], dtype=int)


def gallery_rows(
    ev: Evaluation,
    paths: Sequence[str],
    scenes: Sequence[str],
    queries: Sequence[int],
    k: int,
    items: pd.DataFrame | None = None,
) -> tuple[list[str], list[list[tuple]]]:
    """Query paths and their top-k ``(path, score, relevant)`` for :func:`plots.retrieval_gallery`.

    ``queries`` are collection indices; those not among ``ev``'s queries are skipped. With
    ``items`` (the collection's, in the same order as ``paths``) each result gets a fourth
    element, its caption line (periodical, date, page).
    """
    from .provenance import describe

    captions = None
    if items is not None:
        captions = [describe(r) for r in items.to_dict("records")]
    paths = [str(p) for p in paths]
    scenes = np.asarray(scenes, dtype=object)
    where = {int(q): r for r, q in enumerate(ev.query_idx)}
    rows = [where[int(q)] for q in queries if int(q) in where]
    idx, val = top_k(ev.scores[rows], k, ev.mask[rows])
    qpaths, results = [], []
    for r, cand, sc in zip(rows, idx, val):
        q = int(ev.query_idx[r])
        qpaths.append(paths[q])
        row = [
            (paths[c], float(s), bool(scenes[c] == scenes[q] and scenes[q] != UNLABELLED))
            for c, s in zip(cand, sc)
        ]
        results.append(row if captions is None else [(*r, captions[c]) for r, c in zip(row, cand)])
    return qpaths, results
