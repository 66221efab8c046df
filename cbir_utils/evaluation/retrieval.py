"""Ranked lists, top-k tables and the evaluation protocols.

Each query's candidates are the collection, itself excluded, as a ranked list: whole up to
:data:`cbir_utils.engine.search.FULL_LISTS_MAX` images (the figures of the full matrix),
the top :data:`cbir_utils.engine.search.EVAL_TOP` above. No ``N x N`` matrix is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cbir_utils.engine.search import exact_search, list_length
from cbir_utils.errors import InputError
from cbir_utils.evaluation import metrics as M
from cbir_utils.sources.data import UNLABELLED
from cbir_utils.sources.provenance import add_columns, describe

PROTOCOLS = {
    "all": "every labelled image is a query (no training involved)",
    "study": "queries are test images of scenes seen in fine-tuning (the original protocol)",
    "disjoint": "queries are images of scenes held out of fine-tuning (scene-disjoint)",
}


def ranked_lists(
    desc: np.ndarray, query_idx: Sequence[int], k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, scores)``: each query's top-``k`` rows by cosine, itself excluded, best first
    (ties: lower index), ``-1``/``-inf`` where a list is shorter.
    """
    q = np.asarray(query_idx, dtype=int)
    nb = exact_search(np.asarray(desc[q], dtype=np.float32), desc, k or list_length(len(desc)), q)
    return nb.indices, nb.scores


def list_relevance(
    indices: np.ndarray, scenes: Sequence[str], query_idx: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``relevant`` (the candidate shows the query's scene) and ``n_relevant`` (per query, the
    other images of its scene; 0 when unlabelled).
    """
    scenes = np.asarray(scenes, dtype=object)
    q = np.asarray(query_idx, dtype=int)
    sq = scenes[q]
    labelled = sq != UNLABELLED
    rel = (indices >= 0) & (scenes[np.where(indices >= 0, indices, 0)] == sq[:, None])
    counts = pd.Series(scenes).value_counts()
    n_rel = np.where(labelled, counts.reindex(sq).to_numpy() - 1, 0)
    return rel & labelled[:, None], n_rel.astype(np.int64)


def topk_table(
    relpaths: Sequence[str],
    scenes: Sequence[str],
    query_idx: Sequence[int],
    indices: np.ndarray,
    scores: np.ndarray,
    k: int,
    items: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Long table ``query, rank, candidate, score, relevant`` of each query's ranked list, and
    the candidate's metadata with ``items``.
    """
    relpaths = np.asarray(relpaths, dtype=object)
    scenes = np.asarray(scenes, dtype=object)
    idx, val = np.asarray(indices)[:, :k], np.asarray(scores)[:, :k]
    ok = idx >= 0
    q = np.repeat(np.asarray(query_idx, dtype=int), idx.shape[1])[ok.ravel()]
    c = idx[ok]
    table = pd.DataFrame(
        {
            "query": relpaths[q],
            "rank": np.tile(np.arange(1, idx.shape[1] + 1), len(idx))[ok.ravel()],
            "candidate": relpaths[c],
            "score": val[ok].round(6),
            "relevant": (scenes[q] == scenes[c]) & (scenes[q] != UNLABELLED),
        }
    )
    if items is None:
        return table

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
    """Retrieval quality of one ranking under one protocol: ranking metrics, pairwise figures at
    the threshold, the PR curve, and the queries' ranked lists.
    """

    protocol: str
    ranking: M.RetrievalMetrics
    pairwise: M.PairwiseResult
    pr_curve: pd.DataFrame
    indices: np.ndarray
    scores: np.ndarray
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

    def top(self, query: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` candidates of the query at collection row ``query`` (and scores)."""
        where = np.flatnonzero(self.query_idx == int(query))
        if not len(where):
            raise InputError(f"Image {query} is not among the queries of this evaluation.")
        idx, val = self.indices[where[0], :k], self.scores[where[0], :k]
        return idx[idx >= 0], val[idx >= 0]


def list_threshold(
    indices: np.ndarray, scores: np.ndarray, scenes: Sequence[str], query_idx: Sequence[int]
) -> float:
    """Threshold maximising pairwise F1 over the ranked lists of ``query_idx`` (validation)."""
    if len(query_idx) == 0:
        raise InputError("No validation queries to choose a threshold on.")
    rel, n_rel = list_relevance(indices, scenes, query_idx)
    return float(M.best_threshold(scores, rel, n_relevant=n_rel))


def choose_threshold(desc: np.ndarray, scenes: Sequence[str], val_idx: Sequence[int]) -> float:
    """Cosine threshold maximising pairwise F1 with the validation images as queries."""
    val_idx = np.asarray(val_idx, dtype=int)
    return list_threshold(*ranked_lists(desc, val_idx), scenes, val_idx)


def evaluate_lists(
    indices: np.ndarray,
    scores: np.ndarray,
    scenes: Sequence[str],
    query_idx: Sequence[int],
    threshold: float,
    ks: Sequence[int] = (1, 5, 10),
    protocol: str = "all",
) -> Evaluation:
    """Every metric of the queries' ranked lists, pairwise ones at ``threshold``."""
    query_idx = np.asarray(query_idx, dtype=int)
    if len(query_idx) == 0:
        raise InputError(f"Protocol {protocol!r} has no query images.")
    scores = np.where(indices >= 0, scores, -np.inf)
    rel, n_rel = list_relevance(indices, scenes, query_idx)
    return Evaluation(
        protocol=protocol,
        ranking=M.retrieval_metrics(scores, rel, ks=tuple(ks), n_relevant=n_rel),
        pairwise=M.pairwise_prf(scores, rel, threshold, n_relevant=n_rel),
        pr_curve=M.pr_curve(scores, rel, n_relevant=n_rel),
        indices=np.asarray(indices),
        scores=scores,
        query_idx=query_idx,
    )


def evaluate(
    desc: np.ndarray,
    scenes: Sequence[str],
    query_idx: Sequence[int],
    threshold: float,
    ks: Sequence[int] = (1, 5, 10),
    protocol: str = "all",
) -> Evaluation:
    """Rank the collection by cosine for each query (:func:`ranked_lists`) and evaluate it."""
    query_idx = np.asarray(query_idx, dtype=int)
    idx, sc = ranked_lists(desc, query_idx)
    return evaluate_lists(idx, sc, scenes, query_idx, threshold, ks, protocol)


def evaluate_ranked(
    indices: np.ndarray,
    scores: np.ndarray,
    split: pd.DataFrame,
    protocols: Sequence[str] = ("all", "study", "disjoint"),
    ks: Sequence[int] = (1, 5, 10),
    threshold: float | None = None,
) -> dict[str, Evaluation]:
    """Evaluate the collection's ranking under several protocols at one threshold (``None``:
    chosen on the validation queries); protocols without queries are skipped.
    """
    scenes = split["scene"].to_numpy(dtype=object)
    if len(indices) != len(scenes):
        raise InputError(f"{len(indices)} ranked lists for a split of {len(scenes)} images.")
    if threshold is None:
        val = protocol_queries(split, "val")
        threshold = list_threshold(indices[val], scores[val], scenes, val)
    out = {}
    for p in protocols:
        q = protocol_queries(split, p)
        if len(q):
            out[p] = evaluate_lists(indices[q], scores[q], scenes, q, threshold, ks, protocol=p)
    return out


def evaluate_collection(
    ranked,
    split: pd.DataFrame,
    protocols: Sequence[str] = ("all", "study", "disjoint"),
    ks: Sequence[int] = (1, 5, 10),
    threshold: float | None = None,
) -> dict[str, Evaluation]:
    """The quality of a collection ranked against itself (a
    :class:`cbir_utils.engine.pipeline.RankedCollection`) under each protocol."""
    r = ranked.ranking
    return evaluate_ranked(r.indices, r.scores, split, protocols, ks, threshold)


def evaluate_protocols(
    desc: np.ndarray,
    split: pd.DataFrame,
    protocols: Sequence[str] = ("all", "study", "disjoint"),
    ks: Sequence[int] = (1, 5, 10),
    threshold: float | None = None,
) -> dict[str, Evaluation]:
    """:func:`evaluate_ranked` of the cosine ranking of ``desc`` (rows in split order)."""
    idx, sc = ranked_lists(desc, np.arange(len(desc)))
    return evaluate_ranked(idx, sc, split, protocols, ks, threshold)


def results_table(results: dict[str, dict[str, Evaluation]]) -> pd.DataFrame:
    """One row per (method, protocol) from ``{method: {protocol: Evaluation}}``."""
    rows = [{"method": m, **ev.to_dict()} for m, per in results.items() for ev in per.values()]
    return pd.DataFrame(rows)


def best_on_validation(table: pd.DataFrame) -> str:
    """The method with the best validation mAP (then µAP): held-out scenes stay for the report."""
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
    """Query paths and their top-k ``(path, score, relevant[, caption])`` for the gallery."""

    captions = None
    if items is not None:
        captions = [describe(r) for r in items.to_dict("records")]
    paths = [str(p) for p in paths]
    scenes = np.asarray(scenes, dtype=object)
    asked = set(ev.query_idx.tolist())
    qpaths, results = [], []
    for q in (int(q) for q in queries if int(q) in asked):
        cand, sc = ev.top(q, k)
        qpaths.append(paths[q])
        row = [
            (paths[c], float(s), bool(scenes[c] == scenes[q] and scenes[q] != UNLABELLED))
            for c, s in zip(cand, sc)
        ]
        results.append(row if captions is None else [(*r, captions[c]) for r, c in zip(row, cand)])
    return qpaths, results
