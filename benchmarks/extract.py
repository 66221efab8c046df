"""Extraction at the model's speed: the ONNX backbones end to end vs their bare session.

For ``sscd`` and ``sscd_distilled``: end to end from the files (:func:`features.extract` at
the library's defaults: decoding workers, batch 32, descreening, letterbox, model, vectors
written) vs the bare onnxruntime session on the same images already decoded and
letterboxed into uint8 batches, the collection streamed ``--headline-scale`` times,
interleaved ``--repeats`` times with the order alternating (medians; target >= 0.90).
Writes ``outputs/benchmarks/extract_onnx.csv`` and ``extract_onnx_summary.json``::

    .venv/bin/python benchmarks/extract.py --check   # about 3 minutes on 2 CPU cores
    .venv/bin/python benchmarks/extract.py --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cbir_utils.engine import features, models  # noqa: E402
from cbir_utils.io import save_csv, save_json  # noqa: E402
from cbir_utils.paths import OUTPUTS_DIR, resolve  # noqa: E402
from cbir_utils.sources import data  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and of its finished (waited-for) children, e.g. workers."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


CPU_PER_IMAGE: dict[str, float] = {}  # CPU seconds per image of the last run of each kind


def batch_sizes_for(n: int, bs: int) -> list[int]:
    """The batch sizes the DataLoader makes for ``n`` images."""
    return [min(bs, n - a) for a in range(0, n, bs)]


def e2e_throughput(
    model: models.RetrievalNet,
    paths: list[Path],
    prep: data.Preprocess,
    bs: int,
    threads: int,
    workers: int,
    prefetch: int | None,
    out_dir: Path,
) -> float:
    """Images per second of the whole extraction, vectors streamed to a ``.npy`` file."""
    features.extract(model, paths[:bs], prep, batch_size=bs, num_workers=0, progress=False)  # warm
    out = out_dir / "bench.npy"
    c0, t0 = cpu_seconds(), time.perf_counter()
    features.extract(
        model,
        paths,
        prep,
        batch_size=bs,
        num_workers=workers,
        prefetch_factor=prefetch,
        threads=threads,
        progress=False,
        out=out,
    )
    dt = time.perf_counter() - t0
    CPU_PER_IMAGE["end-to-end"] = (cpu_seconds() - c0) / len(paths)
    out.unlink()
    return len(paths) / dt


def onnx_bare_throughput(trunk: models.OnnxTrunk, batches: list) -> float:
    """Images per second of the bare onnxruntime session on uint8 batches already in memory."""
    trunk.run(batches[0])  # warm-up
    n = sum(len(b) for b in batches)
    c0, t0 = cpu_seconds(), time.perf_counter()
    for b in batches:
        trunk.run(b)
    dt = time.perf_counter() - t0
    CPU_PER_IMAGE["bare"] = (cpu_seconds() - c0) / n
    return n / dt


def onnx_phase(
    paths: list[Path], size: int, repeats: int, tmp: Path, rows: list[dict], scale: int = 1
) -> dict:
    """The ONNX backbones (SSCD int8 and its student) end to end vs their bare session.

    The same images, decoded and letterboxed to ``size`` beforehand into uint8 NHWC
    batches of 32, are what the bare session runs; end to end is :func:`features.extract`
    at the library's defaults (decoding workers, batch 32) from the files, the collection
    streamed ``scale`` times (the workers' start-up amortised, as at scale), and the bare
    session over the same stream. Interleaved ``repeats`` times, order alternating; the
    median ratio is reported per backbone.
    """
    paths = list(paths) * scale
    out = {}
    bs, threads = 32, torch.get_num_threads()
    w_default = features.default_num_workers()
    pf_default = features.PREFETCH_FACTOR if w_default else None
    for backbone in ("sscd", "sscd_distilled"):
        model = models.build_model(backbone, "default").eval()
        prep = models.preprocess_for(backbone, size, "letterbox", grayscale=True, descreen=3.0)
        trunk = model.trunk
        batches = []
        for a in range(0, len(paths), bs):
            x = torch.stack([prep(data.load_image(p)) for p in paths[a : a + bs]])
            batches.append(trunk.to_pixels(x))
        bare_runs, e2e_runs = [], []
        for r in range(repeats):
            if r % 2 == 0:
                b = onnx_bare_throughput(trunk, batches)
                e = e2e_throughput(model, paths, prep, bs, threads, w_default, pf_default, tmp)
            else:
                e = e2e_throughput(model, paths, prep, bs, threads, w_default, pf_default, tmp)
                b = onnx_bare_throughput(trunk, batches)
            bare_runs.append(b)
            e2e_runs.append(e)
            for kind, tp in (("bare onnxruntime", b), ("end-to-end", e)):
                rows.append(
                    dict(phase="5 onnx", kind=kind, backbone=backbone, batch_size=bs,
                         threads=threads, workers=w_default if kind == "end-to-end" else None,
                         images=len(paths), img_per_s=tp, repeat=r)
                )  # fmt: skip
            print(f"  {backbone} repeat {r}: bare {b:6.1f} img/s, end-to-end {e:6.1f} img/s")
        ratio = statistics.median(e / b for e, b in zip(e2e_runs, bare_runs))
        out[backbone] = {
            "image_size": size,
            "bare_img_per_s_median": statistics.median(bare_runs),
            "e2e_img_per_s_median": statistics.median(e2e_runs),
            "ratio_median": ratio,
            "target_ratio": 0.9,
        }
        print(f"-> {backbone}: end-to-end / bare onnxruntime = {ratio:.3f} (target >= 0.90)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="data/demo", help="collection (folder or manifest)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved bare/e2e repeats")
    ap.add_argument(
        "--headline-scale",
        type=int,
        default=3,
        help="collection repeated (the workers' start-up, ~0.3 s, amortised)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--onnx-size", type=int, default=288, help="network input size")
    ap.add_argument("--check", action="store_true", help="exit 1 when a ratio misses 0.90")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument("--out", default=str(OUTPUTS_DIR / "benchmarks"))
    args = ap.parse_args(argv)

    paths = data.load_collection(resolve(args.data)).paths
    if args.quick:
        paths, args.repeats, args.headline_scale = paths[:24], 1, 1
    out_dir = Path(args.out)
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    load0 = os.getloadavg()
    print(f"{len(paths)} images, {os.cpu_count()} cores, load average {load0[0]:.2f}")
    rows: list[dict] = []
    onnx = onnx_phase(paths, args.onnx_size, args.repeats, tmp, rows, args.headline_scale)
    sfx = f"_{args.tag}" if args.tag else ""
    save_csv(out_dir / f"extract_onnx{sfx}.csv", pd.DataFrame(rows))
    load1 = os.getloadavg()
    save_json(
        out_dir / f"extract_onnx_summary{sfx}.json",
        {**onnx, "images": len(paths), "load_average_start_end": [load0[0], load1[0]]},
    )
    missed = [b for b, v in onnx.items() if v["ratio_median"] < 0.9]
    print("ONNX end-to-end >= 0.90 of bare:", "MET" if not missed else f"NOT MET ({missed})")
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
