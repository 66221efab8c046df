"""The default retrieval pipeline at scale: 100k and 1M descriptors, one query at a time.

What :class:`cbir_utils.engine.pipeline.FittedPipeline` costs on a collection far larger than the
demo: synthetic SSCD-sized descriptors (512-d, ``synthetic.synthetic_vectors``,
clustered like real collections), the notebooks' default post-processing (PCA-whitening to
64 dimensions learned on a 100k sample, αDBA and αQE with one neighbour), and the top-k
lists from ``cbir_utils.engine.search`` (exact below 50k, HNSW above). Measured per size:

* fitting time (whitening, the αDBA database, its search indexes) and peak memory;
* the **descriptor stage** of a new query (whitening, αDBA-like and αQE neighbours, top
  100): milliseconds one query at a time and in a batch, and recall@100 of its top 100
  against exact search of the same query vector;
* the **re-ranking stage** beside it: local-feature verification (SIFT + RANSAC) of a
  query's top 50 candidates, measured on real demo printings (features of the collection
  read from the on-disk cache, as a saved index does), and the verification graph's cost
  at indexing time (``N x 50`` verifications) extrapolated from it: on one machine, and
  per task of a graph-shard array (``index --graph-shards M``, :mod:`cbir_utils.engine.graph_shards`:
  each task also loads the index and builds its search index, the fitting time here).

Usage::

    .venv/bin/python benchmarks/scale.py                  # 100k (about a minute)
    .venv/bin/python benchmarks/scale.py --sizes 100000 1000000 --check   # and 1M (~5 min)

``--check`` exits 1 when a size misses the targets: under 10 ms per query one at a time for
the descriptor stage, recall@100 at least 0.95, peak memory within 24 GB. Writes
``outputs/benchmarks/scale.csv`` and ``scale.md``.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from synthetic import synthetic_vectors  # noqa: E402

from cbir_utils.config import PipelineConfig  # noqa: E402
from cbir_utils.engine import pipeline, search  # noqa: E402
from cbir_utils.engine import verify as V  # noqa: E402
from cbir_utils.io import atomic_write_text, markdown_table, save_csv  # noqa: E402
from cbir_utils.paths import DEMO_DIR, OUTPUTS_DIR  # noqa: E402

TARGET_MS, TARGET_RECALL, TARGET_GB = 10.0, 0.95, 24.0


def peak_gb() -> float:
    """Peak resident memory of this process so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth)]
    return float(np.mean(hits) / truth.shape[1])


def descriptor_stage(n: int, dim: int, n_queries: int, single: int, k: int, seed: int) -> dict:
    """Fit the default post-processing on ``n`` synthetic descriptors and time new queries."""
    gc.collect()
    data = synthetic_vectors(n + n_queries, dim, "clustered", seed=seed)
    desc, queries = data[:n], data[n:]
    del data
    config = PipelineConfig.baseline(image_size=288, whiten_dim=64, dba_k=1, qe_k=1)
    paths = [f"synthetic/{i}.jpg" for i in range(n)]  # never opened: no re-ranking here
    t0 = time.perf_counter()
    fitted = pipeline.FittedPipeline.fit(desc, paths, config, progress=False)
    fitted.neighbours(fitted.database[:1], 1)  # builds the search index of the database
    fit_s = time.perf_counter() - t0
    # one query at a time: the whole descriptor stage (post-processing, then the top k)
    times = []
    found = []
    for i in range(single):
        t1 = time.perf_counter()
        q = fitted.query_vectors(queries[i : i + 1])
        nb = fitted.neighbours(q, k)
        times.append(time.perf_counter() - t1)
        found.append(nb.indices[0])
    t1 = time.perf_counter()
    qb = fitted.query_vectors(queries)
    nb_batch = fitted.neighbours(qb, k)
    batch_ms = (time.perf_counter() - t1) * 1000 / len(queries)
    truth = search.exact_search(qb, fitted.database, k).indices
    method = "exact" if fitted._search._index is None else fitted._search.method
    return {
        "n": n,
        "dim": dim,
        "search": method,
        "fit_s": round(fit_s, 1),
        "ms_per_query_single": round(1000 * float(np.median(times)), 2),
        "ms_per_query_batch": round(batch_ms, 2),
        "recall@100": round(recall_at(nb_batch.indices, truth), 4),
        "recall@100_single": round(recall_at(np.array(found), truth[:single]), 4),
        "peak_gb": round(peak_gb(), 2),
    }


def rerank_stage(n_queries: int, top_n: int = 50) -> dict:
    """Verification of a query's top ``top_n`` on real demo printings, features cached."""
    from cbir_utils.sources import data

    if not DEMO_DIR.exists():
        from cbir_utils.sources.demo import build_demo_collection

        build_demo_collection(DEMO_DIR, progress=False)
    col = data.load_collection(DEMO_DIR, validate="none", progress=False)
    paths = [str(p) for p in col.paths]
    store = V.LocalFeatureStore(cache_dir=OUTPUTS_DIR / "cache" / "local")
    rng = np.random.default_rng(0)
    qi = rng.choice(len(paths), n_queries, replace=False)
    cand = [rng.choice(np.delete(np.arange(len(paths)), i), top_n, replace=False) for i in qi]
    for c in cand:  # the collection's features, as a saved index has them
        for j in c:
            store.get(paths[j])
    secs, per_pair = [], []
    for i, c in zip(qi, cand):
        t0 = time.perf_counter()
        q = V.local_features(paths[i], mirror=False, **store.options)  # a new query
        V.rerank(q, [paths[j] for j in c], np.zeros(len(c)), top_n, store=store)
        secs.append(time.perf_counter() - t0)
        per_pair.append(secs[-1] / top_n)
    return {
        "rerank_ms_per_query": round(1000 * float(np.median(secs)), 1),
        "ms_per_verification": round(1000 * float(np.median(per_pair)), 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=300, help="queries of the batch")
    ap.add_argument("--single", type=int, default=50, help="queries timed one at a time")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--rerank-queries", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--graph-tasks", type=int, nargs="+", default=[16, 32],
                    help="graph-shard array sizes to project the graph's cost for")  # fmt: skip
    args = ap.parse_args(argv)
    rr = rerank_stage(args.rerank_queries)
    rows = []
    for n in args.sizes:
        row = descriptor_stage(n, args.dim, args.queries, args.single, args.k, args.seed)
        row.update(rr)
        hours = n * 50 * rr["ms_per_verification"] / 1000 / 3600
        row["graph_hours_at_indexing"] = round(hours, 1)
        for m in args.graph_tasks:  # each task verifies n / m images after fitting the index
            row[f"graph_hours_per_task_of_{m}"] = round(hours / m + row["fit_s"] / 3600, 2)
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows)
    out = OUTPUTS_DIR / "benchmarks"
    save_csv(out / "scale.csv", table)
    atomic_write_text(out / "scale.md", markdown_table(table))
    print(table.to_string(index=False))
    if args.check:
        bad = table[
            (table["ms_per_query_single"] >= TARGET_MS)
            | (table["recall@100"] < TARGET_RECALL)
            | (table["peak_gb"] > TARGET_GB)
        ]
        if len(bad):
            print(
                f"MISSED targets (< {TARGET_MS} ms, recall >= {TARGET_RECALL}, <= {TARGET_GB} GB):"
            )
            print(bad.to_string(index=False))
            return 1
        print("All targets met.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
