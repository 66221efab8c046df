"""Indexing throughput, decode to saved index, side by side with peer tools on the same folder.

Measured in one run, one after the other, on the same folder (the demo by default), each
from cold (no descriptor cache):

* ``cbir index`` (this project's command line, its defaults): decode and check, the
  photograph finder, SSCD at 288 px, the local features (SIFT) of every image, whitening
  and αDBA, write the index folder;
* ``cbir index --scales 0.75,1,1.25`` (three scales, the default until 2026-12-06) and
  ``cbir index --graph`` (the verification graph too: every image verified against its best
  50; off by default);
* ``cbir index --profile fast`` (``notebooks/params/fast.yaml``: SSCD's distilled student);
* the defaults' work in-process without the start-up, to show where time goes: the
  descriptors (:func:`cbir_utils.engine.pipeline.describe`) plus the local features every
  image needs for re-ranking (:class:`cbir_utils.engine.verify.LocalFeatureStore`);
* ``immaculate --method sscd`` / ``sscd_distilled`` (Python >= 3.12: pass its executable
  with ``--immaculate``), which embeds the same folder with the same ONNX models and groups
  near duplicates;
* ``imagededup``'s CNN method (``--imagededup``: the package importable by this Python); its
  MobileNet weights download at run time, so it runs with this project's offline
  ``efficientnet_lite0`` as its custom model (its own decoding, resizing and search).

Every row has its throughput ratio to ``immaculate --method sscd`` in the same run (the
target of the indexing issue: at least 1.0); ``--check`` exits 1 when ``cbir index`` is
below it, or when immaculate could not be run. Writes ``outputs/benchmarks/indexing.csv``
and ``indexing.md``. Usage (immaculate needs Python >= 3.12)::

    python3.12 -m venv /tmp/imm && /tmp/imm/bin/pip install "immaculate[sscd]"
    .venv/bin/python benchmarks/indexing.py --immaculate /tmp/imm/bin/immaculate --check
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cbir_utils import runs  # noqa: E402
from cbir_utils.config import config_from_params  # noqa: E402
from cbir_utils.engine import models, pipeline  # noqa: E402
from cbir_utils.engine import verify as V  # noqa: E402
from cbir_utils.io import atomic_write_text, save_csv  # noqa: E402
from cbir_utils.paths import OUTPUTS_DIR, resolve  # noqa: E402
from cbir_utils.sources import data  # noqa: E402

CBIR = "cbir index (defaults: the photograph finder, 1 scale, SIFT)"
THREE = "cbir index --scales 0.75,1,1.25 (three scales)"
GRAPH = "cbir index --graph (defaults and the verification graph)"
FAST = "cbir index --profile fast (SSCD's student)"
PEER = "immaculate --method sscd"


def _timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def cbir_index(folder: Path, tmp: Path, *options: str) -> float:
    """Seconds of ``cbir index`` from cold (its own outputs folder, empty cache)."""
    cold = tmp / ("cli_outputs" + "".join(c for c in "_".join(options) if c.isalnum() or c == "_"))
    env = {**os.environ, "CBIR_OUTPUTS_DIR": str(cold)}  # no cache shared between the rows
    cmd = [sys.executable, "-m", "cbir_utils", "index", str(folder), "--name", "bench", "-q"]
    return _timed([*cmd, *options], env)


def full_pipeline(folder: Path) -> float:
    """Seconds of the notebooks' default indexing work: descriptors + local features."""
    params = runs.notebook_defaults("01_pretrained_retrieval")
    config = config_from_params(params)
    collection = data.open_collection(folder, build_demo=False)
    t0 = time.perf_counter()
    model = models.build_model(params["BACKBONE"], params["WEIGHTS"], params["POOLING"]).eval()
    meta = models.model_meta(params["BACKBONE"], params["WEIGHTS"], params["POOLING"], 0)
    pipeline.describe(model, meta, collection.paths, config, None, progress=False)
    store = V.LocalFeatureStore()
    for p in collection.paths:
        store.get(p)
    return time.perf_counter() - t0


def immaculate(exe: str, folder: Path, method: str) -> float:
    """Seconds of ``immaculate --method METHOD --json FOLDER``."""
    return _timed([exe, "--json", "--method", method, str(folder)])


def imagededup_cnn(folder: Path) -> float:
    """Seconds of imagededup's CNN encode + find_duplicates with the offline lite0 model."""
    from cbir_utils._compat import import_torchvision

    import_torchvision()  # the torchvision "nms" workaround, before imagededup imports it
    from imagededup.methods import CNN
    from imagededup.utils import CustomModel

    net = models.build_model("efficientnet_lite0", "imagenet").eval()

    class _Lite(models.torch.nn.Module):  # imagededup calls model(x) and squeezes the output
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.descriptor(x)

    pre = models.preprocess_for("efficientnet_lite0", 224, "center_crop", grayscale=False)
    t0 = time.perf_counter()
    cnn = CNN(model_config=CustomModel(name="lite0", model=_Lite(), transform=pre))
    enc = cnn.encode_images(image_dir=str(folder), recursive=True)
    cnn.find_duplicates(encoding_map=enc, min_similarity_threshold=0.9)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--immaculate", default=shutil.which("immaculate") or "")
    ap.add_argument("--imagededup", action="store_true", help="also imagededup's CNN")
    ap.add_argument("--out", default=str(OUTPUTS_DIR / "benchmarks"))
    ap.add_argument("--check", action="store_true", help="exit 1 under immaculate's speed")
    args = ap.parse_args(argv)
    folder = resolve(args.data)
    n = len(data.load_collection(folder, validate="none"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_indexing_"))
    load0 = os.getloadavg()[0]
    runs = [(CBIR, lambda: cbir_index(folder, tmp))]
    runs.append((THREE, lambda: cbir_index(folder, tmp, "--scales", "0.75,1,1.25")))
    runs.append((GRAPH, lambda: cbir_index(folder, tmp, "--graph")))
    runs.append((FAST, lambda: cbir_index(folder, tmp, "--profile", "fast")))
    runs.append(("in-process: descriptors + SIFT features", lambda: full_pipeline(folder)))
    if args.immaculate:
        for method in ("sscd", "sscd_distilled"):
            runs.append(
                (
                    f"immaculate --method {method}",
                    lambda m=method: immaculate(args.immaculate, folder, m),
                )
            )
    if args.imagededup:
        runs.append(
            ("imagededup CNN (efficientnet_lite0 as its model)", lambda: imagededup_cnn(folder))
        )
    rows = []
    for label, fn in runs:
        try:
            s = fn()
            rows.append({"tool": label, "images": n, "seconds": s, "img_per_s": n / s})
            print(f"{label}: {n / s:.1f} img/s ({s:.1f} s)")
        except Exception as err:  # a peer tool that is not installed or fails: said, not hidden
            rows.append({"tool": label, "images": n, "note": f"{type(err).__name__}: {err}"[:200]})
            print(f"{label}: not measured ({err})")
    shutil.rmtree(tmp, ignore_errors=True)
    peer = next((r["img_per_s"] for r in rows if r["tool"] == PEER and "img_per_s" in r), None)
    for r in rows:
        if "img_per_s" in r and peer:
            r["ratio_to_peer"] = r["img_per_s"] / peer
    table = pd.DataFrame(rows)
    out = Path(args.out)
    save_csv(out / "indexing.csv", table)
    md = [
        f"{n} images of {folder.name}, {os.cpu_count()} cores, load average {load0:.2f} at start",
        "",
        f"| tool | img/s | seconds | ratio to {PEER} |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if "seconds" in r:
            ratio = f"{r['ratio_to_peer']:.2f}" if "ratio_to_peer" in r else ""
            md.append(f"| {r['tool']} | {r['img_per_s']:.1f} | {r['seconds']:.1f} | {ratio} |")
        else:
            md.append(f"| {r['tool']} | not measured: {r['note']} | | |")
    atomic_write_text(out / "indexing.md", "\n".join(md) + "\n")
    print("\n".join(md))
    ours = next((r.get("ratio_to_peer") for r in rows if r["tool"] == CBIR), None)
    fast = next((r.get("ratio_to_peer") for r in rows if r["tool"] == FAST), None)
    print(f"The fast profile: {fast or float('nan'):.2f} of {PEER}'s throughput.")
    fails = check(ours)
    print("Target:", "met" if not fails else fails)
    return 1 if (args.check and fails) else 0


def check(ratio: float | None) -> str:
    """The target: ``cbir index`` at least as fast as the peer; the failure, or ""."""
    if ratio is None:
        return f"{PEER} was not measured (pass --immaculate)"
    return "" if ratio >= 1.0 else f"cbir index at {ratio:.2f} of {PEER}'s throughput (< 1.0)"


if __name__ == "__main__":
    raise SystemExit(main())
