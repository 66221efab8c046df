"""The backbones side by side, through the notebooks' whole pipeline, on two collections.

Every backbone of :data:`BACKBONE_CANDIDATES` (at its input sizes and descreening),
pretrained and fine-tuned with notebook 02's recipe (:func:`finetune_recipe`), through the
pipeline (whitening, αDBA/αQE, SIFT re-ranking: :class:`PipelineConfig`'s defaults), on the demo and
the check collection, scene-disjoint and study protocols. The pick is made on the demo's
validation queries only (:func:`choose_backbone`) and must be the notebooks' default
(:data:`DEFAULT_BACKBONE`). Writes ``outputs/benchmarks/backbones.{csv,md}``::

    .venv/bin/python benchmarks/quality.py backbones --check   # ~16 min, idle 2-core CPU
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cbir_utils.config import BACKBONE as DEFAULT_NETWORK  # noqa: E402
from cbir_utils.config import PipelineConfig  # noqa: E402
from cbir_utils.engine import models, pipeline  # noqa: E402
from cbir_utils.engine import verify as V  # noqa: E402
from cbir_utils.evaluation import retrieval  # noqa: E402
from cbir_utils.io import atomic_write_text, save_csv  # noqa: E402
from cbir_utils.learning import training  # noqa: E402
from cbir_utils.paths import OUTPUTS_DIR, resolve  # noqa: E402
from cbir_utils.sources import data  # noqa: E402

OUT_DIR = OUTPUTS_DIR / "benchmarks"


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
notebooks' pipeline (:class:`PipelineConfig`'s defaults)."""

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


def finetune_recipe(backbone: str, image_size: int, descreen: float) -> training.TrainConfig:
    """Notebook 02's default recipe (:class:`training.TrainConfig`'s defaults: the study's
    schedule, reprint augmentation) for a backbone (frozen ONNX: a trained projection head)."""
    return training.TrainConfig(
        backbone=backbone, weights="default", image_size=image_size, descreen=descreen
    )


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
    ``s_per_image`` is the uncached extraction at the pipeline's scales, per image, in this run.
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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", default="backbones", choices=("backbones",))
    ap.add_argument(
        "--check", action="store_true", help="exit 1 when a README figure or target is missed"
    )
    ap.add_argument("--out-dir", default=str(OUT_DIR))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    table, pick = run_backbones(resolve(args.out_dir), progress=not args.quiet)
    print(backbones_markdown(table, pick))
    fails = check_backbones(table, pick)
    print("Targets:", "all met" if not fails else "; ".join(fails))
    return 1 if (args.check and fails) else 0


if __name__ == "__main__":
    raise SystemExit(main())
