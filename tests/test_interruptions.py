"""Interruptions: killed runs resume from what they committed and end where an
uninterrupted run ends (fault injection with SIGKILL: no cleanup code runs)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import yaml
from robust_helpers import compare, single_thread, snapshot

from cbir_utils.engine import features, models
from cbir_utils.learning import training
from cbir_utils.paths import NOTEBOOK_02, NOTEBOOKS_DIR
from cbir_utils.sources import data

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the reference uses 1 too
METRICS = ["epoch", "stage", "split", "loss", "accuracy", "precision", "recall", "f1", "lr"]


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process we started and all its descendants (the kernel runs in its own session)."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs(family, timeout=30)


def _papermill(params_file: Path, out_nb: Path, env: dict) -> list[str]:
    return [
        sys.executable, "-m", "papermill", "--no-progress-bar", "-k", "python3",
        "--cwd", str(NOTEBOOKS_DIR), "-f", str(params_file),
        str(NOTEBOOKS_DIR / f"{NOTEBOOK_02}.ipynb"), str(out_nb),
    ]  # fmt: skip


@pytest.mark.slow
def test_notebook_02_killed_mid_training_resumes_to_the_same_result(tmp_path, tiny_collection):
    coll = tmp_path / "collection"
    shutil.copytree(tiny_collection, coll)
    before = snapshot(coll)
    outputs = tmp_path / "outputs"
    params = {
        "DATA_DIR": str(coll), "BUILD_DEMO": False, "BACKBONE": "efficientnet_lite0",
        "IMAGE_SIZE": 32, "BATCH_SIZE": 2, "MAX_BATCHES": 1, "STAGES": [1, 1, 1],
        "RUN_NAME": "killed",
    }  # fmt: skip
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    env = {**os.environ, "CBIR_OUTPUTS_DIR": str(outputs), "PYTHONWARNINGS": "ignore", **ONE_THREAD}
    run_dir = outputs / NOTEBOOK_02 / "killed"
    last = run_dir / "checkpoints" / "last.pt"
    cmd = _papermill(pfile, tmp_path / "first.ipynb", env)

    # 1. start, and SIGKILL papermill and its kernel as soon as epoch 1 is committed
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    try:
        while not last.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "epoch 1 never finished"
            time.sleep(0.01)
    finally:
        _kill_tree(proc)
    killed_at = int(torch.load(last, map_location="cpu", weights_only=False)["epoch"])
    assert 1 <= killed_at < 3, f"killed too late to test a resumption (epoch {killed_at})"
    hist_killed = pd.read_csv(run_dir / "history.csv")  # committed before last.pt: readable
    assert not (run_dir / "test_metrics.json").exists()  # the notebook did not get that far

    # 2. the same command again: resumes from last.pt and finishes
    subprocess.run(
        _papermill(pfile, tmp_path / "second.ipynb", env),
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600,
    )  # fmt: skip
    hist = pd.read_csv(run_dir / "history.csv")
    assert list(zip(hist["epoch"], hist["split"])) == [
        (e, s) for e in (1, 2, 3) for s in ("train", "val")
    ]  # every epoch once: nothing repeated, nothing missing
    done = hist_killed[hist_killed["epoch"] <= killed_at]
    # the epochs finished before the kill were kept as they were (even their timings)
    pd.testing.assert_frame_equal(hist.iloc[: len(done)], done)
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["epoch"] == 3 and (run_dir / "test_metrics.json").is_file()

    # 3. an uninterrupted run of the same configuration ends with the same weights and metrics
    config = training.TrainConfig.from_dict(final["meta"]["train_config"])
    col = data.load_collection(coll, progress=False)
    split = pd.read_csv(next((outputs / "splits").glob("*.csv")), dtype=str, keep_default_na=False)
    with single_thread():
        ref = training.train(
            config,
            col,
            split,
            tmp_path / "reference",
            progress=False,
            max_batches=params["MAX_BATCHES"],
        )
    ref_state = torch.load(ref.last_checkpoint, map_location="cpu", weights_only=False)["model"]
    assert ref_state.keys() == final["model"].keys()
    for k, v in ref_state.items():  # bit for bit (same seed, deterministic CPU kernels)
        assert torch.equal(final["model"][k], v), k
    pd.testing.assert_frame_equal(hist[METRICS], ref.history[METRICS], check_exact=True)

    # 4. the collection was only read
    assert compare(before, snapshot(coll)) == {"lost": [], "added": [], "changed": []}


EXTRACT = textwrap.dedent(
    """
    import os, signal, sys
    from cbir_utils.engine import features, models
    from cbir_utils.sources import data
    root, cache = sys.argv[1], sys.argv[2]
    col = data.load_collection(root, progress=False)
    model = models.build_model("efficientnet_lite0", "imagenet").eval()
    meta = models.model_meta("efficientnet_lite0", "imagenet", "avg", 64)

    def on_chunk(done, total):
        if done >= 8:  # two chunks of 4 committed: die without any cleanup
            os.kill(os.getpid(), signal.SIGKILL)

    features.extract_cached(
        model, col.paths, models.preprocess_from_meta(meta), cache, meta, batch_size=2,
        chunk_size=4, on_chunk=on_chunk, progress=False, num_workers=0,
    )
    """
)


def test_extraction_killed_part_way_resumes_without_recomputing(tmp_path, tiny_collection, lite0):
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-c", EXTRACT, str(tiny_collection), str(cache)],
        env={**os.environ, **ONE_THREAD},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    col = data.load_collection(tiny_collection, progress=False)
    meta = models.model_meta("efficientnet_lite0", "imagenet", "avg", 64)
    prep = models.preprocess_from_meta(meta)
    stats = features.ExtractStats()
    opts = dict(batch_size=2, progress=False, num_workers=0)
    with single_thread():
        vec = features.extract_cached(lite0, col.paths, prep, cache, meta, stats=stats, **opts)
        fresh = features.extract(lite0, col.paths, prep, **opts)
    assert (stats.cached, stats.computed) == (8, len(col) - 8)  # finished batches not redone
    np.testing.assert_allclose(vec, fresh, atol=1e-5)
    again = features.ExtractStats()
    features.extract_cached(lite0, col.paths, prep, cache, meta, stats=again, progress=False)
    assert (again.cached, again.computed) == (len(col), 0)
    assert not list(Path(cache).rglob("*.tmp"))  # committed parts only
