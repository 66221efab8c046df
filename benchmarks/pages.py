"""Fit and measure the page detector (cbir_utils.pages) on simulated pages.

Pages come from cbir_utils.page_builder with the demo's printings (fit and validation) and
with the demo's and the hard collection's printings on other seeds (held out: never used to
fit or choose anything).

    python benchmarks/pages.py --fit       # fit WEIGHTS on the fit pages, print them
    python benchmarks/pages.py --check     # held-out detection; fail under the targets
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd

from cbir_utils import page_builder, pages
from cbir_utils.paths import DEMO_DIR, HARD_DIR

FIT_SEEDS = range(100, 110)
VAL_SEEDS = range(200, 203)
HELD_OUT_SEEDS = range(300, 304)
PAGES_PER_SEED = 10
TARGETS = {"recall": 0.97, "precision": 0.95, "kind_recall": 0.90}


def printings(root) -> list[tuple[str, str]]:
    """``(path, scene)`` of a collection's printings, but those already scanned with part
    of their page (the hard collection's page context): they are pages themselves."""
    m = pd.read_csv(root / "manifest.csv")
    m = m[~m["transforms"].str.contains('"page_context"', regex=False)]
    return [(str(root / p), s) for p, s in zip(m["path"], m["scene"])]


def page_set(seeds, roots=(DEMO_DIR,)):
    items = [it for r in roots for it in printings(r)]
    for seed in seeds:
        yield from page_builder.generate(items, PAGES_PER_SEED, seed)


def labels(img, pictures) -> np.ndarray:
    """1 for blocks whose centre lies in a photograph."""
    f = pages.features(img)
    rows, cols = f.shape[:2]
    k = max(img.size) / pages.SIDE * pages.BLOCK
    cy, cx = (np.arange(rows) + 0.5) * k, (np.arange(cols) + 0.5) * k
    y = np.zeros((rows, cols))
    for p in pictures:
        x0, y0, w, h = p.box
        y[np.ix_((cy >= y0) & (cy < y0 + h), (cx >= x0) & (cx < x0 + w))] = 1
    return f, y


def fit(seeds=FIT_SEEDS, hidden=(32, 16)) -> dict[str, np.ndarray]:
    """The block classifier fitted on the pages of ``seeds`` (arrays of ``pages.MODEL``)."""
    from sklearn.neural_network import MLPClassifier

    xs, ys = [], []
    for _, img, pictures in page_set(seeds):
        f, y = labels(img, pictures)
        xs.append(f.reshape(-1, f.shape[-1]))
        ys.append(y.ravel())
    x, y = np.concatenate(xs), np.concatenate(ys)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    mlp = MLPClassifier(hidden, max_iter=80, early_stopping=True, random_state=0)
    mlp.fit((x - mean) / scale, y)
    model = {"mean": mean, "scale": scale}
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        model[f"w{i}"], model[f"b{i}"] = w.astype(np.float32), b.astype(np.float32)
    return model


def iou(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


def measure(seeds, roots=(DEMO_DIR,), **kw) -> dict:
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
        "pages": n_pages,
    }


def report(name: str, m: dict) -> str:
    kinds = ", ".join(f"{k} {r:.3f} ({n})" for k, (r, n) in m["by_kind"].items())
    return (
        f"{name}: {m['pages']} pages, {m['photos']} photographs: recall {m['recall']:.3f}, "
        f"precision {m['precision']:.3f}; by kind: {kinds}; {m['pages_per_s']:.1f} pages/s"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    if args.fit:
        np.savez(pages.MODEL, **fit())
        pages.load_model.cache_clear()
        print(f"wrote {pages.MODEL}")
    print(report("validation", measure(VAL_SEEDS)))
    m = measure(HELD_OUT_SEEDS, roots=(DEMO_DIR, HARD_DIR))
    print(report("held out", m))
    if args.check:
        ok = (
            m["recall"] >= TARGETS["recall"]
            and m["precision"] >= TARGETS["precision"]
            and all(r >= TARGETS["kind_recall"] for r, _ in m["by_kind"].values())
        )
        print("targets:", "met" if ok else f"missed {TARGETS}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
