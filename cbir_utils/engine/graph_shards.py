"""The verification graph in shards: each task of a SLURM array verifies a slice of the
index against the merged descriptors, then one step gathers the edges.

On one machine the graph costs ``N x rerank_top_n`` geometric verifications (about 0.85 ms
each on 2 cores: 11-12 hours per million images). Split over ``M`` tasks::

    python -m cbir_utils index DATA --name big --num-shards 16 --merge --graph-shards 32
    python -m cbir_utils index DATA --name big --graph-shards 32 --graph-shard $SLURM_ARRAY_TASK_ID
    python -m cbir_utils index DATA --name big --graph-shards 32 --merge-graph

The merge fits the descriptor stage (whitening, αDBA) and saves the index with its graph
pending; each graph task reads that saved pipeline, so every task ranks with the same
vectors. A task writes its slice in parts of :data:`CHUNK` rows under ``<index>.graph/``,
each stamped with the digest of the index's vectors: a rerun computes only the missing
parts, and the gathering refuses parts of other vectors. The gathered graph is the one
:meth:`cbir_utils.engine.pipeline.FittedPipeline.fit` makes on one machine.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from cbir_utils.engine import verify as V
from cbir_utils.engine.features import shard_rows
from cbir_utils.engine.pipeline import FittedPipeline
from cbir_utils.errors import MissingFilesError
from cbir_utils.io import atomic_write_bytes

CHUNK = 2000
"""Rows verified per part file: what an interrupted task loses at most."""


def graph_dir(index_folder: str | Path) -> Path:
    """Where the graph tasks of an index write their parts."""
    folder = Path(index_folder)
    return folder.with_name(folder.name + ".graph")


def _parts(n: int, shard: int, num_shards: int, index_folder: Path) -> list[tuple[range, Path]]:
    rows = shard_rows(n, shard, num_shards)
    out = []
    for c, a in enumerate(range(rows.start, rows.stop, CHUNK)):
        name = f"part-{shard:05d}-of-{num_shards:05d}-{c:05d}.npz"
        out.append((range(a, min(a + CHUNK, rows.stop)), graph_dir(index_folder) / name))
    return out


def _read(path: Path, digest: str, rows: range) -> dict[str, np.ndarray] | None:
    """A part's verified pairs, or None when missing, damaged or made for other vectors."""
    try:
        with np.load(path, allow_pickle=False) as z:
            part = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    span = part.get("span", np.zeros(0)).tolist()
    if str(part.get("digest", "")) != digest or span != [rows.start, rows.stop]:
        return None
    return part


def verify_shard(
    fitted: FittedPipeline,
    digest: str,
    index_folder: str | Path,
    shard: int,
    num_shards: int,
    store: V.LocalFeatureStore | None = None,
    progress: bool = True,
) -> int:
    """Verify shard ``shard`` of ``num_shards`` of the index; returns the rows verified now
    (0 when every part was already there)."""
    done = 0
    for rows, path in _parts(len(fitted), shard, num_shards, Path(index_folder)):
        if _read(path, digest, rows) is not None:
            continue
        lists = fitted.verify_rows(np.arange(rows.start, rows.stop), store, progress)
        r, c = np.nonzero(lists.inliers >= 0)
        buf = io.BytesIO()
        np.savez(buf, rows=(r + rows.start).astype(np.int64), cols=lists.indices[r, c],
                 inliers=lists.inliers[r, c], span=np.array([rows.start, rows.stop]),
                 digest=np.array(digest))  # fmt: skip
        atomic_write_bytes(path, buf.getvalue())
        done += len(rows)
    return done


def gather(
    fitted: FittedPipeline, digest: str, index_folder: str | Path, num_shards: int
) -> V.VerificationGraph:
    """The graph of every shard's parts.

    Raises:
        MissingFilesError: A part is missing, damaged or of other vectors (the shards to
            run again are named).
    """
    n, found, bad = len(fitted), [], []
    for shard in range(num_shards):
        for rows, path in _parts(n, shard, num_shards, Path(index_folder)):
            part = _read(path, digest, rows)
            if part is None:
                bad.append(shard)
            else:
                found.append(part)
    if bad:
        shards = sorted(set(bad))
        raise MissingFilesError(
            f"{len(bad)} part(s) of the verification graph in {graph_dir(index_folder)} are "
            f"missing or not of this index's vectors: run graph shard(s) "
            f"{', '.join(map(str, shards[:10]))}{' ...' if len(shards) > 10 else ''} "
            f"(--graph-shards {num_shards} --graph-shard K) again, then gather."
        )
    cat = {k: np.concatenate([p[k] for p in found]) for k in ("rows", "cols", "inliers")}
    return V.graph_from_verified(cat["rows"], cat["cols"], cat["inliers"], n)
