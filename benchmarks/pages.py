"""Fit and measure the page detector (cbir_utils.engine.pages) on simulated pages.

Pages come from cbir_utils.sources.page_builder: fit pages of the demo's printings; validation and
held-out pages of the demo's and the hard collection's, on seeds of their own (the held-out
ones are never used to fit or choose anything).

    python benchmarks/pages.py --fit       # fit both classifiers, write pages.MODEL
    python benchmarks/pages.py --check     # held-out detection; fail under the targets
    python benchmarks/pages.py --fresh     # also 900 pages drawn after the choices
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cbir_utils import paths
from cbir_utils.engine import index as index_mod
from cbir_utils.engine import pages
from cbir_utils.paths import DEMO_DIR, HARD_DIR, OUTPUTS_DIR
from cbir_utils.sources import data, page_builder, photo

FIT_SEEDS = range(100, 115)
CONTEXT_SEEDS = range(115, 130)
"""Pages of the context classifier (cbir_utils.engine.pages.context): fit pages too."""
VAL_SEEDS = (*range(200, 206), *range(400, 412), *range(600, 618), *range(700, 718))
"""Validation pages: 60, then 480 more drawn when the first 60 no longer told changes apart."""
HELD_OUT_SEEDS = {"held out": range(300, 306), "held out, second sample": range(500, 506)}
"""Pages that chose nothing. The second sample was drawn once the first had been looked at
while choosing (it turned down a change): --check holds both to the targets."""
FRESH_SEEDS = (*range(800, 830), *range(900, 930), *range(1000, 1030))
"""900 pages drawn once the validation pages had chosen (--fresh), to see whether their gains
hold: 800-829 then helped choose one change and 900-929 turned one down; 1000-1029 chose
nothing."""
PAGES_PER_SEED = 10
TARGETS = {"recall": 0.97, "precision": 0.95, "kind_recall": 0.90, "search": 0.90, "cost": 0.03}
"""--check (issue 25): held-out detection recall and precision at IoU >= 0.5, every kind's
recall; with --search, page search at rank 1 and its loss against pages cut at true boxes."""


def missed(m: dict, r: dict | None = None) -> list[str]:
    """The targets a held-out measurement ``m`` (and a page search ``r``) misses, said."""
    out = [f"{k} {m[k]:.3f} < {TARGETS[k]}" for k in ("recall", "precision") if m[k] < TARGETS[k]]
    out += [f"{kind} recall {v:.3f} < {TARGETS['kind_recall']}"
            for kind, (v, _) in m["by_kind"].items() if v < TARGETS["kind_recall"]]  # fmt: skip
    if r is not None:
        if r["detected"] < TARGETS["search"]:
            out.append(f"page search {r['detected']:.3f} < {TARGETS['search']}")
        if r["true boxes"] - r["detected"] > TARGETS["cost"]:
            out.append(f"detection costs {r['true boxes'] - r['detected']:.3f} > {TARGETS['cost']}")
    return out


MIN_CONTRAST = 40
"""Printings with fewer gray levels between their 5th and 95th percentiles are left off the
pages: nobody could see them there (4 of the demo's 267, printings of a near-blank wall)."""


def printings(root) -> list[tuple[str, str]]:
    """``(path, scene)`` of a collection's printings, but those already scanned with part
    of their page (the hard collection's page context: pages themselves) and those under
    :data:`MIN_CONTRAST`."""
    m = pd.read_csv(root / "manifest.csv")
    m = m[~m["transforms"].str.contains('"page_context":{', regex=False)]
    out = []
    for p, s in zip(m["path"], m["scene"]):
        with Image.open(root / p) as im:
            lo, hi = np.percentile(np.asarray(im.convert("L")), [5, 95])
        if hi - lo >= MIN_CONTRAST:
            out.append((str(root / p), s))
    return out


ROOTS = (DEMO_DIR, HARD_DIR)
"""Whose printings go on the validation and held-out pages: the demo's and the hard
collection's (the pages differ by seed: layouts, kinds, scans)."""
FIT_ROOTS = (DEMO_DIR,)
"""Whose printings go on the fit pages: the demo's alone. Fitted on pages of both
collections, the classifier did worse on validation (recall 0.959, precision 0.929 at its
best threshold, against 0.967 and 0.952)."""


def page_set(seeds, roots=ROOTS):
    items = [it for r in roots for it in printings(r)]
    for seed in seeds:
        yield from page_builder.generate(items, PAGES_PER_SEED, seed)


def labels(shape, size, pictures, angle: float = 0.0) -> np.ndarray:
    """1 for the blocks (``shape``: rows, columns) whose centre lies in a photograph, on a page
    of ``size`` pixels turned upright by ``angle`` (the photographs' boxes are on the page)."""
    k = max(size) / pages.SIDE * pages.BLOCK
    cy, cx = np.meshgrid((np.arange(shape[0]) + 0.5) * k, (np.arange(shape[1]) + 0.5) * k,
                         indexing="ij")  # fmt: skip
    if angle:  # the block's centre on the page as scanned
        cx, cy = photo.rotated(cx, cy, angle, size)
    y = np.zeros(shape)
    for p in pictures:
        x0, y0, w, h = p.box
        y[(cx >= x0) & (cx < x0 + w) & (cy >= y0) & (cy < y0 + h)] = 1
    return y


def _perceptron(x, y, hidden, prefix="") -> dict[str, np.ndarray]:
    from sklearn.neural_network import MLPClassifier

    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    mlp = MLPClassifier(hidden, max_iter=80, early_stopping=True, random_state=0)
    mlp.fit((x - mean) / scale, y)
    model = {prefix + "mean": mean, prefix + "scale": scale}
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        model[f"{prefix}w{i}"], model[f"{prefix}b{i}"] = w.astype(np.float32), b.astype(np.float32)
    return model


def fit(seeds=FIT_SEEDS, context_seeds=CONTEXT_SEEDS, hidden=(64, 32)) -> dict[str, np.ndarray]:
    """The block classifier fitted on the pages of ``seeds``, then the context classifier on
    those of ``context_seeds`` (turned upright and mapped by the first as find_photos does:
    pages of its own, so that it learns from maps as good as a new page's); arrays of
    ``pages.MODEL``."""
    xs, ys = [], []
    for _, img, pictures in page_set(seeds, FIT_ROOTS):
        f = pages.features(img.convert("L"))
        xs.append(f.reshape(-1, f.shape[-1]))
        ys.append(labels(f.shape[:2], img.size, pictures).ravel())
    model = _perceptron(np.concatenate(xs), np.concatenate(ys), hidden)
    xs, ys = [], []
    for _, img, pictures in page_set(context_seeds, FIT_ROOTS):
        _, angle, f, p = pages.upright(img, model)
        x = np.concatenate([f, pages.context(p)], axis=-1)
        xs.append(x.reshape(-1, x.shape[-1]))
        ys.append(labels(p.shape, img.size, pictures, angle).ravel())
    return {**model, **_perceptron(np.concatenate(xs), np.concatenate(ys), hidden, "context_")}


iou = page_builder.iou


def measure(seeds, roots=ROOTS, **kw) -> dict:
    found_by_kind: dict[str, list[bool]] = {}
    n_found, n_true_pos, seconds, n_pages = 0, 0, 0.0, 0
    for _, img, pictures in page_set(seeds, roots):
        t = time.perf_counter()
        boxes = pages.find_photos(img, **kw)
        seconds += time.perf_counter() - t
        n_pages += 1
        n_found += len(boxes)
        used = set()
        for p in pictures:
            best = max(((iou(p.box, b), j) for j, b in enumerate(boxes)), default=(0, -1))
            hit = best[0] >= 0.5 and best[1] not in used
            if hit:
                used.add(best[1])
            found_by_kind.setdefault(p.kind, []).append(hit)
        n_true_pos += len(used)
    hits = [h for v in found_by_kind.values() for h in v]
    return {
        "recall": float(np.mean(hits)),
        "precision": n_true_pos / max(n_found, 1),
        "by_kind": {k: (float(np.mean(v)), len(v)) for k, v in sorted(found_by_kind.items())},
        "pages_per_s": n_pages / seconds,
        "photos": len(hits),
        "found": n_found,
        "pages": n_pages,
    }


def _queries(truth: pd.DataFrame, roots) -> list[tuple[str, str]]:
    """Up to two printings per scene on the pages, themselves kept off every page."""
    placed = set(truth["source"])
    out = []
    for scene in sorted(set(truth["scene"]) - {""}):
        rest = [(p, s) for r in roots for p, s in printings(r) if s == scene]
        out += [(p, s) for p, s in rest if Path(p).name not in placed][:2]
    return out


def search(seeds, roots=ROOTS) -> dict[str, float]:
    """End to end: the pages' photographs indexed as ``index --pages`` does, searched by
    printings kept off the pages; a hit is a rank-1 photograph of the query's scene whose box
    covers a true one of that scene (IoU >= 0.5). Also over the pages cut at their true boxes."""
    folder = OUTPUTS_DIR / "benchmarks" / "pages" / f"seeds_{seeds[0]}"
    if folder.exists():
        shutil.rmtree(folder)
    items = [it for r in roots for it in printings(r)]
    truth = pd.DataFrame(
        [row for seed in seeds for row in page_builder.build_pages(items, folder / "pages",
                                                                   PAGES_PER_SEED, seed)]
    )  # fmt: skip
    truth = truth[truth["scene"] != ""]
    col = data.load_collection(folder / "pages", progress=False)
    t = time.perf_counter()
    detected = pages.expand(col, folder / "cache", progress=False)
    seconds = time.perf_counter() - t
    cut = col.items.set_index("relpath")
    true_items = pd.DataFrame(
        [{**cut.loc[r.page].to_dict(), "relpath": paths.region_name(r.page, b),
          "path": paths.region_name(cut.loc[r.page, "path"], b), "scene": r.scene}
         for r in truth.itertuples() for b in [(int(r.x), int(r.y), int(r.w), int(r.h))]]
    )  # fmt: skip
    queries = _queries(truth, roots)
    meta, _ = index_mod.model_settings()
    out = {"queries": len(queries), "detect_pages_per_s": len(col) / seconds}
    for name, items_ in (("detected", detected.items), ("true boxes", true_items)):
        c = replace(col, items=items_.reset_index(drop=True))
        index = index_mod.Index.build(c, meta, config=index_mod.pipeline_config(meta, pages=True),
                                      progress=False)  # fmt: skip
        res = index.search([q for q, _ in queries], k=1, exclude_self=False, progress=False)
        first = res[res["rank"] == 1]
        top = dict(zip(first["query"].map(lambda q: Path(q).name), first["candidate"]))
        hits = {}
        for q, scene in queries:
            page, box = paths.split_region(top[Path(q).name])
            boxes = truth[(truth["page"] == page) & (truth["scene"] == scene)]
            hit = any(iou(box, (b.x, b.y, b.w, b.h)) >= 0.5 for b in boxes.itertuples())
            hits.setdefault(Path(q).parents[1].name, []).append(hit)  # by collection
        out[name] = float(np.mean([h for v in hits.values() for h in v]))
        out[f"{name} by collection"] = {k: (float(np.mean(v)), len(v)) for k, v in hits.items()}
    return out


def interval(p: float, n: int, z: float = 1.96) -> str:
    """The 95 % Wilson interval of a share ``p`` of ``n``: how far a sample of that size can
    fall from the detector's rate by its draw alone."""
    if not n:
        return ""
    mid, half = (p + z * z / (2 * n)), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return f" [{(mid - half) / (1 + z * z / n):.3f}-{(mid + half) / (1 + z * z / n):.3f}]"


def report(name: str, m: dict) -> str:
    kinds = ", ".join(f"{k} {r:.3f} ({n})" for k, (r, n) in m["by_kind"].items())
    return (
        f"{name}: {m['pages']} pages, {m['photos']} photographs: recall {m['recall']:.3f}"
        f"{interval(m['recall'], m['photos'])}, precision {m['precision']:.3f}"
        f"{interval(m['precision'], m['found'])}; by kind: {kinds}; {m['pages_per_s']:.1f} pages/s"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--search", action="store_true", help="also the end-to-end page search")
    ap.add_argument("--fresh", action="store_true", help="also the 900 pages of FRESH_SEEDS")
    args = ap.parse_args(argv)
    if args.fit:
        np.savez(pages.MODEL, **fit())
        pages.load_model.cache_clear()
        print(f"wrote {pages.MODEL}")
    print(report("validation", measure(VAL_SEEDS)))
    if args.fresh:
        print(report("fresh", measure(FRESH_SEEDS)))
    fails = []
    for name, seeds in HELD_OUT_SEEDS.items():
        m = measure(seeds)
        print(report(name, m))
        r = search(seeds) if args.search else None
        if r is not None:
            print(
                f"  page search: {r['queries']} printings kept off the pages; rank 1 is their "
                f"scene with a covering box: {r['detected']:.3f} (pages cut at their true "
                f"boxes: {r['true boxes']:.3f}); detection {r['detect_pages_per_s']:.1f} pages/s"
            )
            for kind in ("detected", "true boxes"):
                parts = r[f"{kind} by collection"].items()
                print(f"    {kind}: " + ", ".join(f"{k} {v:.3f} ({n})" for k, (v, n) in parts))
        fails += [f"{name}: {f}" for f in missed(m, r)]
    if args.check:
        print("targets:", "met" if not fails else "missed: " + "; ".join(fails))
        return 1 if fails else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
