"""Fast fine-tuning vs the study's full recipe, at CPU size, in one run.

* **full**: :func:`cbir_utils.learning.training.train` with the study's recipe (the paper
  profile's values) sized for a CPU: efficientnet_lite0, ImageNet weights, stages 3+4+4
  instead of 30+50+50, batch 32, image 224, center crop, Adam lr 0.001, cross-entropy;
  timed from start to ``best.pt``.
* **fast**: :func:`cbir_utils.learning.fast_finetune.fast_finetune` with the same network and
  input (frozen backbone, learned whitening chosen by scene-disjoint cross-validation),
  timed from start to its checkpoint, with an empty descriptor cache ("cold") and again
  with the cache filled ("warm"); and its PCA-whitening variant (``methods=("pca",)``).

Both checkpoints are then evaluated exactly as notebook 03 does: descriptors of the whole
collection, ``retrieval.evaluate_protocols`` with the split of ``data.split_for``, the
threshold chosen on the validation images; the pretrained network is the baseline.
Target: the fast mode's scene-disjoint mAP >= the full recipe's, in <= 1/10 of its time.

Writes ``outputs/benchmarks/finetune.csv``, ``finetune.json`` and ``finetune.png``::

    .venv/bin/python benchmarks/finetune.py           # ~10-20 min on 2 CPU cores (the full recipe)
    .venv/bin/python benchmarks/finetune.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cbir_utils.engine import features, models  # noqa: E402
from cbir_utils.evaluation import retrieval  # noqa: E402
from cbir_utils.io import save_csv, save_figure, save_json  # noqa: E402
from cbir_utils.learning import training  # noqa: E402
from cbir_utils.learning.fast_finetune import FastConfig, fast_finetune  # noqa: E402
from cbir_utils.paths import OUTPUTS_DIR, resolve  # noqa: E402
from cbir_utils.sources import data  # noqa: E402

PROTOCOLS = ("disjoint", "study")


def evaluate(model, meta, collection, split, output="descriptor", workers=None) -> dict:
    """Notebook 03's evaluation of one model: {protocol: metrics dict} plus extraction time."""
    t0 = time.perf_counter()
    desc = features.extract(
        model,
        collection.paths,
        models.preprocess_from_meta(meta),
        output=output,
        num_workers=workers,
        progress=False,
    )
    extract_s = time.perf_counter() - t0
    evals = retrieval.evaluate_protocols(desc, split, PROTOCOLS)
    return {"extract_s": extract_s, **{p: ev.to_dict() for p, ev in evals.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--stages", type=int, nargs="+", default=[3, 4, 4])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (both modes)")
    ap.add_argument("--quick", action="store_true", help="1 epoch, small images (smoke run)")
    ap.add_argument("--out", default=str(OUTPUTS_DIR / "benchmarks"))
    args = ap.parse_args(argv)
    if args.quick:
        args.stages, args.image_size = [1], 96
    workers = features.default_num_workers() if args.workers is None else args.workers
    out = Path(args.out)
    work = out / "finetune_runs"
    if work.exists():
        shutil.rmtree(work)  # timings need a fresh start: no resumed run, no warm cache
    collection = data.load_collection(resolve(args.data))
    split, split_path = data.split_for(collection)
    print(
        f"{len(collection)} images; split {split_path}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    load0 = os.getloadavg()[0]

    cfg = training.TrainConfig(
        backbone="efficientnet_lite0",
        weights="imagenet",
        image_size=args.image_size,
        stages=tuple(args.stages),
        num_workers=workers,
    )
    rows, evals = [], {}

    # ---- full recipe
    t0 = time.perf_counter()
    res = training.train(cfg, collection, split, work / "full", progress=False)
    full_s = time.perf_counter() - t0
    print(f"full recipe: {full_s:.0f} s ({res.history['seconds'].sum():.0f} s in epochs)")
    ft_model, ft_meta, _ = models.load_checkpoint(res.best_checkpoint)

    # ---- fast mode, cold then warm cache
    fcfg = FastConfig.from_train_config(cfg, num_workers=workers)
    t0 = time.perf_counter()
    fast = fast_finetune(fcfg, collection, split, work / "fast", progress=False)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast_finetune(fcfg, collection, split, work / "fast_warm", work / "fast" / "cache", False)
    warm_s = time.perf_counter() - t0
    print(
        f"fast: {fast_s:.1f} s cold (embedding {fast.embed_seconds:.1f} s, fit "
        f"{fast.fit_seconds:.2f} s), {warm_s:.2f} s warm; {fast.method}, dim {fast.dim}, "
        f"shrinkage {fast.shrinkage}, cross-validated mAP {fast.baseline_cv_map:.3f} -> "
        f"{fast.cv_map:.3f}"
    )
    t0 = time.perf_counter()  # variant: PCA whitening (same cached descriptors)
    pca = fast_finetune(
        FastConfig.from_train_config(cfg, num_workers=workers, methods=("pca",)),
        collection,
        split,
        work / "fast_pca",
        work / "fast" / "cache",
        False,
    )
    pca_s = time.perf_counter() - t0 + fast.embed_seconds  # as if cold
    fast_model, fast_meta, _ = models.load_checkpoint(fast.checkpoint)
    pca_model, pca_meta, _ = models.load_checkpoint(pca.checkpoint)
    base_meta = {k: v for k, v in ft_meta.items() if k not in ("classes", "train_config")}
    base_model = models.build_model(cfg.backbone, cfg.weights, cfg.pooling)

    # ---- evaluation, as notebook 03
    evals["pretrained"] = evaluate(base_model, base_meta, collection, split, workers=workers)
    evals["full: descriptors"] = evaluate(ft_model, ft_meta, collection, split, workers=workers)
    evals["full: logits (study)"] = evaluate(
        ft_model, ft_meta, collection, split, "logits", workers
    )
    evals["fast: descriptors"] = evaluate(fast_model, fast_meta, collection, split, workers=workers)
    evals["fast: logits"] = evaluate(fast_model, fast_meta, collection, split, "logits", workers)
    evals["fast (pca): descriptors"] = evaluate(
        pca_model, pca_meta, collection, split, workers=workers
    )
    times = {
        "pretrained": 0.0,
        "full: descriptors": full_s,
        "full: logits (study)": full_s,
        "fast: descriptors": fast_s,
        "fast: logits": fast_s,
        "fast (pca): descriptors": pca_s,
    }
    for method, ev in evals.items():
        for p in PROTOCOLS:
            if p in ev:
                rows.append(
                    {
                        "method": method,
                        "protocol": p,
                        "finetune_s": times[method],
                        "time_vs_full": times[method] / full_s,
                        "mAP": ev[p]["mAP"],
                        "P@1": ev[p]["P@1"],
                        "muAP": ev[p]["muAP"],
                        "pair_f1": ev[p]["pair_f1"],
                        "eval_extract_s": ev["extract_s"],
                    }
                )
    df = pd.DataFrame(rows)
    save_csv(out / "finetune.csv", df)
    d_full = df[(df.method == "full: descriptors") & (df.protocol == "disjoint")]["mAP"].item()
    d_fast = df[(df.method == "fast: descriptors") & (df.protocol == "disjoint")]["mAP"].item()
    d_base = df[(df.method == "pretrained") & (df.protocol == "disjoint")]["mAP"].item()
    summary = {
        "profile": {"stages": args.stages, "image_size": args.image_size, "workers": workers},
        "full_seconds": full_s,
        "fast_seconds_cold": fast_s,
        "fast_seconds_warm": warm_s,
        "fast_embed_seconds": fast.embed_seconds,
        "fast_fit_seconds": fast.fit_seconds,
        "time_ratio_cold": fast_s / full_s,
        "time_ratio_warm": warm_s / full_s,
        "disjoint_mAP": {"pretrained": d_base, "full": d_full, "fast": d_fast},
        "study_mAP": {
            m: df[(df.method == f"{m}: descriptors") & (df.protocol == "study")]["mAP"].item()
            for m in ("full", "fast", "fast (pca)")
        },
        "fast_pca_disjoint_mAP": df[
            (df.method == "fast (pca): descriptors") & (df.protocol == "disjoint")
        ]["mAP"].item(),
        "fast_choice": {
            "method": fast.method,
            "dim": fast.dim,
            "shrinkage": fast.shrinkage,
            "cv_mAP": fast.cv_map,
            "baseline_cv_mAP": fast.baseline_cv_map,
        },
        "target": "fast disjoint mAP >= full, time <= 0.1 x full",
        "met": bool(d_fast >= d_full and fast_s <= 0.1 * full_s),
        "load_average_start_end": [load0, os.getloadavg()[0]],
    }
    save_json(out / "finetune.json", summary)
    _plot(df, summary, out / "finetune.png")
    print(df.round(3).to_string(index=False))
    print(json.dumps(summary, indent=2))
    return 0


def _plot(df: pd.DataFrame, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = ["full recipe", "fast (cold cache)", "fast (warm cache)"]
    secs = [summary["full_seconds"], summary["fast_seconds_cold"], summary["fast_seconds_warm"]]
    a1.barh(names, secs, color=["tab:red", "tab:blue", "tab:cyan"])
    a1.axvline(summary["full_seconds"] / 10, color="k", ls=":", label="target: 1/10 of full")
    for y, s in enumerate(secs):
        a1.text(s, y, f" {s:.1f} s", va="center")
    a1.set(xscale="log", xlabel="fine-tuning wall time (s)", title="Cost")
    a1.legend(fontsize=8)
    g = df.pivot(index="method", columns="protocol", values="mAP")
    g = g.reindex([m for m in df["method"].unique()])
    g.plot.bar(ax=a2, rot=20)
    a2.set(ylabel="mAP", title="Retrieval quality (notebook 03 protocols)", ylim=(0, 1))
    a2.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"Fast fine-tuning vs the full recipe, demo profile, {os.cpu_count()} CPU cores")
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
