"""Cost of checking a collection's files at every notebook start (issue 7).

Measured side by side in one run, on the same collection (default: the demo), best of
``--repeats`` for each level:

* **scan only** (``validate="none"``): list the files, no image opened;
* **header** (``validate="header"``): ``Image.open`` + ``verify()`` + JPEG end marker;
* **decode** (``validate="decode"``, the default): every image decoded once, as extraction
  will decode it, in a thread pool;
* **decode, cache cold**: the first notebook start (decode, and write the per-file cache);
* **decode, cache warm**: later starts (``stat()`` of each file, nothing decoded).

Prints a table and writes ``outputs/benchmarks/validation.json``. Usage::

    .venv/bin/python benchmarks/validation.py [--data data/demo] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

from cbir_utils.io import save_json
from cbir_utils.paths import OUTPUTS_DIR, resolve
from cbir_utils.sources import data


def _best(source, repeats: int, **kw) -> tuple[float, data.Collection]:
    best, col = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        col = data.load_collection(source, progress=False, **kw)
        best = min(best, time.perf_counter() - t0)
    return best, col


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    source = resolve(args.data)
    rows = {}
    rows["scan only"], col = _best(source, args.repeats, validate="none")
    rows["header"], _ = _best(source, args.repeats, validate="header")
    rows["decode, no cache"], _ = _best(source, args.repeats, validate="decode")
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        data.load_collection(source, progress=False, cache_dir=cache)
        rows["decode, cache cold"] = time.perf_counter() - t0
        rows["decode, cache warm"], _ = _best(source, args.repeats, cache_dir=cache)
    n = len(col)
    print(f"{source}: {n} images ({platform.node()}; compare ratios, not times, across runs)")
    for k, v in rows.items():
        print(f"  {k:22s} {v * 1000:8.1f} ms  {v / n * 1000:6.2f} ms/image  "
              f"{v / rows['scan only']:5.1f}x scan")  # fmt: skip
    save_json(
        OUTPUTS_DIR / "benchmarks" / "validation.json",
        {"collection": str(source), "images": n, "seconds": rows},
    )
    print(json.dumps({k: round(v, 4) for k, v in rows.items()}))


if __name__ == "__main__":
    main()
