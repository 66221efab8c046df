"""Extraction at the model's speed: end-to-end descriptor extraction vs the bare model.

Measured side by side in one run, on the same batch sizes and image size:

* **bare**: ``model.descriptor`` on random tensors already in memory (channels-last,
  inference mode): what the model alone can do on this machine.
* **end-to-end**: :func:`cbir_utils.engine.features.extract` over the collection, streamed to a
  ``.npy`` file: file decoding, gray/resize, normalisation, model, pooling, L2, write.

Phases (all in one process, so the ratios compare like with like):

1. model settings on the bare model: inference mode vs ``no_grad``, channels-last vs not,
   torch threads, batch size;
2. pipeline settings end to end: DataLoader workers and prefetching;
3. the headline: bare vs end-to-end at the library's defaults (batch 32, torch's threads,
   ``features.default_num_workers()`` workers) on the collection streamed
   ``--headline-scale`` times (so the worker's start-up is amortised, as at scale),
   interleaved ``--repeats`` times with the order alternating (medians; CPU seconds per
   image too), target end-to-end >= 90 %;
4. memory: peak resident memory of streamed extraction for the collection and for the
   collection repeated ``--scale`` times (flat = the same).

Writes ``outputs/benchmarks/extract.csv``, ``extract_summary.json`` and ``extract.png``.
Usage::

    .venv/bin/python benchmarks/extract.py --repeats 7   # about 10 minutes on 2 CPU cores
    .venv/bin/python benchmarks/extract.py --quick    # a smoke run (seconds)
    .venv/bin/python benchmarks/extract.py --onnx --check   # SSCD ONNX vs bare onnxruntime

``--onnx`` measures only the ONNX backbones (``sscd``, ``sscd_distilled``): end to end from
the files vs their bare onnxruntime session on the same images already decoded and
letterboxed to uint8 batches (target >= 0.90); written to ``extract_onnx*.{csv,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cbir_utils.engine import features, models  # noqa: E402
from cbir_utils.io import save_csv, save_figure, save_json  # noqa: E402
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


def bare_throughput(
    model: models.RetrievalNet,
    n: int,
    bs: int,
    size: int,
    threads: int,
    channels_last: bool = True,
    inference: bool = True,
) -> float:
    """Images per second of the model alone on ``n`` random images in batches of ``bs``."""
    m = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    sizes = batch_sizes_for(n, bs)
    xs = {
        b: torch.randn(b, 3, size, size, generator=gen).contiguous(memory_format=fmt)
        for b in set(sizes)
    }
    ctx = torch.inference_mode if inference else torch.no_grad
    with features.torch_threads(threads), ctx():
        models.l2_normalise(m.descriptor(xs[sizes[0]]))  # warm-up
        c0, t0 = cpu_seconds(), time.perf_counter()
        for b in sizes:
            models.l2_normalise(m.descriptor(xs[b])).numpy()
        dt = time.perf_counter() - t0
        CPU_PER_IMAGE["bare"] = (cpu_seconds() - c0) / n
    return n / dt


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


class PeakMemory:
    """Peak proportional set size (PSS) of this process and its worker processes.

    PSS splits pages shared between processes (forked DataLoader workers share most of
    the parent's memory), so the sum is not inflated by counting them twice.
    """

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _pss(self) -> int:
        total = 0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except psutil.Error:  # a worker that just exited
                pass
        return total

    def __enter__(self) -> PeakMemory:
        self.base = self._pss()
        self.peak = self.base
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._pss())
            time.sleep(self.period)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._pss())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="data/demo", help="collection (folder or manifest)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--prefetch", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved bare/e2e repeats")
    ap.add_argument(
        "--headline-only",
        action="store_true",
        help="skip the settings sweeps (phases 1-2); use --batch-size and --threads",
    )
    ap.add_argument(
        "--batch-size", type=int, default=None, help="phases 2-4 (default: extract's, 32)"
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="phases 2-4 torch threads (default: torch's)"
    )
    ap.add_argument("--scale", type=int, default=3, help="collection repeated for the memory test")
    ap.add_argument(
        "--headline-scale",
        type=int,
        default=3,
        help="collection repeated in the headline (the worker's start-up, ~0.3 s, amortised)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument(
        "--onnx",
        action="store_true",
        help="only the ONNX backbones (sscd, sscd_distilled) vs their bare onnxruntime session",
    )
    ap.add_argument("--onnx-size", type=int, default=288, help="input size of the ONNX phase")
    ap.add_argument("--check", action="store_true", help="exit 1 when a ratio misses 0.90")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument("--out", default=str(OUTPUTS_DIR / "benchmarks"))
    args = ap.parse_args(argv)

    collection = data.load_collection(resolve(args.data))
    paths = collection.paths
    if args.quick:
        paths = paths[:24]
        args.batch_sizes, args.workers, args.prefetch = [8], [0, 1], [2]
        args.repeats, args.scale, args.headline_scale = 1, 2, 1
    n = len(paths)
    size = args.image_size
    cores = os.cpu_count() or 1
    model = models.build_model("efficientnet_lite0", "imagenet").eval()
    meta = models.model_meta("efficientnet_lite0", "imagenet", "avg", size)
    prep = models.preprocess_from_meta(meta)
    out_dir = Path(args.out)
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    rows: list[dict] = []
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    print(f"{n} images, image size {size}, {cores} cores, load average {load0[0]:.2f}")

    if args.onnx:
        onnx_rows: list[dict] = []
        onnx = onnx_phase(paths, args.onnx_size, args.repeats, tmp, onnx_rows, args.headline_scale)
        sfx = f"_{args.tag}" if args.tag else ""
        save_csv(out_dir / f"extract_onnx{sfx}.csv", pd.DataFrame(onnx_rows))
        load1 = os.getloadavg()
        save_json(
            out_dir / f"extract_onnx_summary{sfx}.json",
            {**onnx, "images": n, "cores": cores, "load_average_start_end": [load0[0], load1[0]]},
        )
        missed = [b for b, v in onnx.items() if v["ratio_median"] < 0.9]
        print("ONNX end-to-end >= 0.90 of bare:", "MET" if not missed else f"NOT MET ({missed})")
        return 1 if (args.check and missed) else 0

    # decoding cost alone (main process, one thread), for context
    with features.torch_threads(1):
        t0 = time.perf_counter()
        for p in paths[: min(n, 64)]:
            prep(data.load_image(p))
        decode_ms = (time.perf_counter() - t0) / min(n, 64) * 1000
    print(f"decode + preprocess: {decode_ms:.1f} ms/image (one core)")

    # ---- phase 1: model settings, bare model
    thread_opts = sorted({1, cores})
    m_images = min(n, 96) if not args.quick else 16  # settings compared on 96 images
    ref_bs = 32 if 32 in args.batch_sizes else args.batch_sizes[0]
    combos = [(bs, th, True, True) for bs in args.batch_sizes for th in thread_opts]
    combos += [
        (ref_bs, cores, cl, inf) for cl, inf in ((True, False), (False, True), (False, False))
    ]
    if args.headline_only:
        combos = []
    for bs, threads, cl, inf in combos:
        tp = bare_throughput(model, m_images, bs, size, threads, cl, inf)
        mode = "inference" if inf else "no_grad"
        rows.append(
            dict(phase="1 model", kind="bare", batch_size=bs, threads=threads, channels_last=cl,
                 mode=mode, workers=None, prefetch=None, images=m_images, img_per_s=tp)
        )  # fmt: skip
        print(
            f"  bare bs={bs:3d} threads={threads} channels_last={cl!s:5} {mode:9s}: {tp:6.1f} img/s"
        )
    if not args.headline_only:
        p1 = pd.DataFrame(rows)
        main1 = p1[(p1["channels_last"]) & (p1["mode"] == "inference")]
        best = main1.sort_values("img_per_s", ascending=False).iloc[0]
        print(f"-> fastest bare: batch {int(best['batch_size'])}, {int(best['threads'])} thread(s)")
    # pipeline and headline at the library's defaults unless told otherwise
    bs_best = args.batch_size or 32
    th_best = args.threads or torch.get_num_threads()
    print(f"-> measuring at batch size {bs_best}, {th_best} thread(s)")

    # ---- phase 2: pipeline settings, end to end
    for workers in [] if args.headline_only else args.workers:
        for prefetch in args.prefetch if workers else [None]:
            tp = e2e_throughput(model, paths, prep, bs_best, th_best, workers, prefetch, tmp)
            rows.append(
                dict(phase="2 pipeline", kind="end-to-end", batch_size=bs_best, threads=th_best,
                     channels_last=True, mode="inference", workers=workers, prefetch=prefetch,
                     images=n, img_per_s=tp)
            )  # fmt: skip
            print(f"  e2e workers={workers} prefetch={prefetch}: {tp:6.1f} img/s")
    p2 = pd.DataFrame([r for r in rows if r["phase"] == "2 pipeline"])
    w_best = pf_best = None
    if len(p2):
        best2 = p2.sort_values("img_per_s", ascending=False).iloc[0]
        w_best = int(best2["workers"])
        pf_best = None if pd.isna(best2["prefetch"]) else int(best2["prefetch"])
        print(f"-> {w_best} worker(s), prefetch {pf_best}")

    # ---- phase 3: headline, interleaved; the library defaults are what is measured
    w_default = features.default_num_workers()
    pf_default = features.PREFETCH_FACTOR if w_default else None
    bare_runs, e2e_runs, bare_cpu, e2e_cpu = [], [], [], []
    stream = paths * args.headline_scale  # amortise the worker's start-up as at scale
    n3 = len(stream)
    print(f"  headline on {n3} images (the collection x {args.headline_scale})")
    for r in range(args.repeats):  # alternate the order, so drifts in load cancel out
        if r % 2 == 0:
            b = bare_throughput(model, n3, bs_best, size, th_best)
            e = e2e_throughput(model, stream, prep, bs_best, th_best, w_default, pf_default, tmp)
        else:
            e = e2e_throughput(model, stream, prep, bs_best, th_best, w_default, pf_default, tmp)
            b = bare_throughput(model, n3, bs_best, size, th_best)
        bare_runs.append(b)
        e2e_runs.append(e)
        bare_cpu.append(CPU_PER_IMAGE["bare"])
        e2e_cpu.append(CPU_PER_IMAGE["end-to-end"])
        cpu_b, cpu_e = bare_cpu[-1], e2e_cpu[-1]
        for kind, tp in (("bare", b), ("end-to-end", e)):
            rows.append(
                dict(phase="3 headline", kind=kind, batch_size=bs_best, threads=th_best,
                     channels_last=True, mode="inference",
                     workers=w_default if kind != "bare" else None,
                     prefetch=pf_default if kind != "bare" else None,
                     images=n3, img_per_s=tp, repeat=r,
                     cpu_ms_per_image=1000 * (cpu_b if kind == "bare" else cpu_e))
            )  # fmt: skip
        print(
            f"  repeat {r}: bare {b:6.1f} img/s, end-to-end {e:6.1f} img/s, ratio {e / b:.3f}; "
            f"CPU {1000 * cpu_b:.0f} vs {1000 * cpu_e:.0f} ms/image"
        )
    ratios = [e / b for e, b in zip(e2e_runs, bare_runs)]
    ratio = statistics.median(ratios)

    # ---- phase 4: memory flat as the collection grows (streamed to disk)
    mem = {}
    for mult in (1, args.scale):
        many = paths * mult
        with PeakMemory() as rss:
            features.extract(
                model, many, prep, batch_size=bs_best, num_workers=w_default,
                threads=th_best, progress=False, out=tmp / "mem.npy",
            )  # fmt: skip
        (tmp / "mem.npy").unlink()
        mem[len(many)] = (rss.peak - rss.base) / 2**20
        rows.append(
            dict(phase="4 memory", kind="end-to-end", batch_size=bs_best, threads=th_best,
                 workers=w_default, images=len(many), peak_rss_increase_mib=mem[len(many)])
        )  # fmt: skip
        print(
            f"  streamed extraction of {len(many)} images: peak memory (PSS) +{mem[len(many)]:.0f} MiB"
        )

    load1 = os.getloadavg()
    df = pd.DataFrame(rows)
    sfx = f"_{args.tag}" if args.tag else ""
    save_csv(out_dir / f"extract{sfx}.csv", df)
    summary = {
        "images": n,
        "headline_images": n3,
        "image_size": size,
        "cores": cores,
        "batch_size": bs_best,
        "threads": th_best,
        "workers": w_default,
        "prefetch": pf_default,
        "best_workers_phase2": w_best,
        "decode_ms_per_image": decode_ms,
        "bare_img_per_s_median": statistics.median(bare_runs),
        "e2e_img_per_s_median": statistics.median(e2e_runs),
        "ratio_median": ratio,
        "cpu_ms_per_image_bare_median": 1000 * statistics.median(bare_cpu),
        "cpu_ms_per_image_e2e_median": 1000 * statistics.median(e2e_cpu),
        "cpu_efficiency_ratio": statistics.median(bare_cpu) / statistics.median(e2e_cpu),
        "ratios": ratios,
        "target_ratio": 0.9,
        "memory_peak_increase_mib": mem,
        "load_average_start_end": [load0[0], load1[0]],
        "seconds": time.perf_counter() - t_start,
    }
    save_json(out_dir / f"extract_summary{sfx}.json", summary)
    _plot(df, summary, out_dir / f"extract{sfx}.png")
    print(json.dumps(summary, indent=2))
    print(
        f"end-to-end / bare = {ratio:.3f} (target >= 0.90) -> {'MET' if ratio >= 0.9 else 'NOT MET'}"
    )
    return 1 if (args.check and ratio < 0.9) else 0


def _plot(df: pd.DataFrame, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    p1 = df[df["phase"] == "1 model"]
    ax = axes[0]
    for (th, cl, mode), g in p1.groupby(["threads", "channels_last", "mode"]):
        g = g.sort_values("batch_size")
        style = "-o" if (cl and mode == "inference") else "s"
        ax.plot(g["batch_size"], g["img_per_s"], style, label=f"{th} thr, cl={cl}, {mode}")
    ax.set(xscale="log", xlabel="batch size", ylabel="images / s", title="1 · bare model settings")
    ax.set_xticks(sorted(p1["batch_size"].unique()), labels=sorted(p1["batch_size"].unique()))
    ax.legend(fontsize=7)
    p2 = df[df["phase"] == "2 pipeline"]
    ax = axes[1]
    labels = [
        f"w={int(w)}\npf={'-' if pd.isna(p) else int(p)}"
        for w, p in zip(p2["workers"], p2["prefetch"])
    ]
    ax.bar(range(len(p2)), p2["img_per_s"], color="tab:green")
    ax.axhline(summary["bare_img_per_s_median"], color="k", ls="--", label="bare model (median)")
    ax.set_xticks(range(len(p2)), labels, fontsize=8)
    ax.set(ylabel="images / s", title=f"2 · end-to-end, batch {summary['batch_size']}")
    ax.legend(fontsize=8)
    p3 = df[df["phase"] == "3 headline"]
    ax = axes[2]
    for kind, color in (("bare", "tab:gray"), ("end-to-end", "tab:blue")):
        g = p3[p3["kind"] == kind]
        ax.plot(g["repeat"], g["img_per_s"], "-o", color=color, label=kind)
    ax.set(xlabel="repeat (interleaved)", ylabel="images / s",
           title=f"3 · e2e / bare = {summary['ratio_median']:.2f} (target 0.90)")  # fmt: skip
    ax.legend(fontsize=8)
    fig.suptitle(
        f"Extraction, efficientnet_lite0 {summary['image_size']}px, {summary['cores']} cores "
        f"(load {summary['load_average_start_end'][0]:.1f}), {summary['workers']} worker(s)"
    )
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
