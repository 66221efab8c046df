"""Duplicate grouping at scale: every pair above a cosine threshold, 100k images in < 1 minute.

Synthetic 1280-d descriptors: the clustered mixture of ``synthetic.synthetic_vectors``
(cosine statistics of real demo descriptors) plus planted near-duplicate groups: 10 % of
the images get 1 to 3 reprints (cosine about 0.9-0.98 with their original). Pairs at or
above ``--threshold`` are found with :func:`cbir_utils.engine.search.pairs_above`:

* ``exact``: chunked matrix products (every pair scored; the reference);
* ``ivf``: candidates from a FAISS IVF index (each image's ``k_max`` nearest in its
  closest lists), scores exact.

Recall is measured against brute force on a random sample of rows (all their pairs above
the threshold), and on the planted pairs whose cosine reaches the threshold. Memory: peak growth of resident memory during
the call (the data itself excluded). Writes ``outputs/benchmarks/pairs.csv`` and
``pairs.png``::

    .venv/bin/python benchmarks/pairs.py             # 10k, 30k exact and IVF; 100k IVF (~5 min)
    .venv/bin/python benchmarks/pairs.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from synthetic import synthetic_vectors  # noqa: E402

from cbir_utils.engine import search  # noqa: E402
from cbir_utils.io import save_csv, save_figure  # noqa: E402
from cbir_utils.paths import OUTPUTS_DIR  # noqa: E402

TARGET_S = 60.0


def with_duplicates(n: int, dim: int, seed: int) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """``n`` vectors: clustered originals and reprints of 10 % of them (shuffled)."""
    rng = np.random.default_rng(seed + 1)
    n_src = n // 12  # originals with reprints; about 2 reprints each -> ~10 % of n
    copies_per = rng.integers(1, 4, size=n_src)
    n_copies = int(copies_per.sum())
    base = synthetic_vectors(n - n_copies, dim, "clustered", seed=seed)
    src = rng.choice(len(base), size=n_src, replace=False)
    owner = np.repeat(src, copies_per)
    noise = rng.standard_normal((n_copies, dim)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    eps = rng.uniform(0.15, 0.45, size=(n_copies, 1)).astype(np.float32)  # cos ~0.9-0.99
    copies = base[owner] + eps * noise
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    x = np.concatenate([base, copies])
    perm = rng.permutation(len(x))
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(x))
    x = x[perm]
    members: dict[int, list[int]] = {}
    for c, o in enumerate(owner):
        members.setdefault(int(o), [int(o)]).append(len(base) + c)
    planted = set()
    for group in members.values():
        g = sorted(int(inv[i]) for i in group)
        planted |= {(a, b) for k, a in enumerate(g) for b in g[k + 1 :]}
    return x, planted


class PeakRSS:
    def __init__(self) -> None:
        self.proc, self.stop, self.peak = psutil.Process(), threading.Event(), 0

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = self.proc.memory_info().rss
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.t.join()

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def sample_truth(x: np.ndarray, rows: np.ndarray, t: float) -> set[tuple[int, int]]:
    """Brute force: every pair above ``t`` that involves one of ``rows``."""
    out = set()
    for a in range(0, len(rows), 256):
        r = rows[a : a + 256]
        s = x[r] @ x.T
        s[np.arange(len(r)), r] = -np.inf
        i, j = np.nonzero(s >= t)
        for u, v in zip(r[i], j):
            out.add((int(min(u, v)), int(max(u, v))))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--exact-max", type=int, default=30_000, help="largest N run exactly")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--k-max", type=int, default=search.DEFAULT_K_MAX)
    ap.add_argument("--sample", type=int, default=2000, help="rows checked by brute force")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(OUTPUTS_DIR / "benchmarks"))
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.exact_max, args.dim, args.sample = [3000], 3000, 128, 300
    rows = []
    load0 = os.getloadavg()[0]
    print(f"{os.cpu_count()} cores, load average {load0:.2f}")
    for n in args.sizes:
        x, planted = with_duplicates(n, args.dim, args.seed)
        rng = np.random.default_rng(args.seed)
        sample = np.sort(rng.choice(n, size=min(n, args.sample), replace=False))
        truth = sample_truth(x, sample, args.threshold)
        pl = np.array(sorted(planted))
        cos = (x[pl[:, 0]] * x[pl[:, 1]]).sum(1)
        planted = {(int(a), int(b)) for (a, b), c in zip(pl, cos) if c >= args.threshold}
        in_sample = set(sample.tolist())
        print(f"\n== N = {n:,}: {len(planted):,} planted pairs above the threshold")
        for method in ("exact", "ivf"):
            if method == "exact" and n > args.exact_max:
                continue
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                p = search.pairs_above(x, args.threshold, args.k_max, method=method)
                secs = time.perf_counter() - t0
            found = set(zip(p.i.tolist(), p.j.tolist()))
            sampled = {pr for pr in found if pr[0] in in_sample or pr[1] in in_sample}
            rec_sample = len(sampled & truth) / max(1, len(truth))
            rec_planted = len(found & planted) / max(1, len(planted))
            rows.append(
                dict(n=n, method=method, threshold=args.threshold, k_max=args.k_max,
                     seconds=secs, peak_mib=mem.mib, data_mib=x.nbytes / 2**20, pairs=len(found),
                     recall_sample=rec_sample, recall_planted=rec_planted,
                     false_pairs=len(sampled - truth), target_s=TARGET_S)
            )  # fmt: skip
            print(
                f"  {method}: {secs:.1f} s, peak +{mem.mib:.0f} MiB (data {x.nbytes / 2**20:.0f} "
                f"MiB), {len(found):,} pairs, recall {rec_sample:.3f} (sample), "
                f"{rec_planted:.3f} (planted)"
            )
        del x
    df = pd.DataFrame(rows)
    df["load_average"] = f"{load0:.1f}-{os.getloadavg()[0]:.1f}"
    out = Path(args.out)
    save_csv(out / "pairs.csv", df)
    _plot(df, out / "pairs.png")
    print(df.round(3).to_string(index=False))
    return 0


def _plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for method, g in df.groupby("method"):
        a1.plot(g["n"], g["seconds"], "-o", label=method)
        a2.plot(g["n"], g["peak_mib"], "-o", label=method)
    a1.axhline(TARGET_S, color="k", ls=":", label="target (100k)")
    a1.set(xscale="log", yscale="log", xlabel="images", ylabel="seconds", title="All pairs >= t")
    a2.set(xscale="log", xlabel="images", ylabel="peak memory growth (MiB)", title="Memory")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    fig.suptitle(f"Duplicate pairs, 1280-d, {os.cpu_count()} CPU cores")
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
