"""Nothing lost or damaged: the collection is only read, outputs appear whole or not at all,
and a run never silently replaces the results of a run with other parameters."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from robust_helpers import compare, single_thread, snapshot

from cbir_utils import io, paths, runs
from cbir_utils.engine import features, models
from cbir_utils.errors import SettingsError
from cbir_utils.evaluation import retrieval
from cbir_utils.learning import training
from cbir_utils.sources import data


@pytest.fixture()
def messy_copy(tmp_path, tiny_collection) -> Path:
    """A copy of the tiny collection with bad files, a loose distractor and a manifest."""
    root = tmp_path / "data" / "collection"
    shutil.copytree(tiny_collection, root)
    (root / "scene_camera" / "empty.jpg").write_bytes(b"")
    (root / "scene_rocket" / "cut.jpg").write_bytes(
        (root / "scene_rocket" / "rocket_0.jpg").read_bytes()[:800]
    )
    (root / "notes.txt").write_text("catalogue notes")
    shutil.copy(root / "scene_china" / "china_0.jpg", root / "loose distractor.jpg")
    return root


def test_full_pipeline_never_writes_to_the_collection(messy_copy, tmp_path, lite0, monkeypatch):
    """The library calls of notebooks 01, 02 and 03, with the data folder hashed around them."""
    with single_thread():
        _full_pipeline(messy_copy, tmp_path, lite0, monkeypatch)


def _full_pipeline(messy_copy, tmp_path, lite0, monkeypatch):
    out_root = tmp_path / "outputs"
    monkeypatch.setattr(paths, "OUTPUTS_DIR", out_root)
    before = snapshot(messy_copy.parent)
    warnings.simplefilter("ignore", data.SkippedFilesWarning)

    # notebook 01: parameters, run folder, collection, split, descriptors, metrics, tables
    params = runs.check_params(
        {"DATA_DIR": str(messy_copy), "IMAGE_SIZE": "64", "BACKBONE": "efficientnet_lite0"}
    )
    out = runs.start_run(paths.NOTEBOOK_01, "safety", params, root=out_root)
    col = data.open_collection(params["DATA_DIR"], build_demo=True)  # not a demo: never built
    assert len(col) == 21 and set(col.skipped["kind"]) == {"empty", "truncated", "not_image"}
    data.save_skipped(col, out)
    split, split_path = data.split_for(col, seed=0)
    meta = models.model_meta("efficientnet_lite0", "imagenet", "avg", 64)
    prep = models.preprocess_from_meta(meta)
    desc = features.extract_cached(
        lite0,
        col.paths,
        prep,
        out_root / "cache",
        meta,
        batch_size=11,
        progress=False,
        num_workers=0,
    )
    evals = retrieval.evaluate_protocols(desc, split, ks=(1, 5))
    io.save_csv(out / "metrics.csv", retrieval.results_table({"pretrained": evals}))
    io.save_json(out / "metrics.json", {p: ev.to_dict() for p, ev in evals.items()})

    # notebook 02 (one short epoch) and 03 (fine-tuned logits)
    cfg = training.TrainConfig(
        backbone="efficientnet_lite0", image_size=64, batch_size=4, stages=(1,)
    )
    out2 = runs.start_run(paths.NOTEBOOK_02, "safety", {"STAGES": [1]}, root=out_root)
    result = training.train(cfg, col, split, out2, progress=False, max_batches=1)
    model, meta2, _ = models.load_checkpoint(result.best_checkpoint)
    logits = features.extract_cached(
        model,
        col.paths,
        prep,
        out_root / "cache",
        meta2,
        output="logits",
        progress=False,
        batch_size=11,
        num_workers=0,
    )
    assert logits.shape[0] == len(col)

    diff = compare(before, snapshot(messy_copy.parent))
    assert diff == {"lost": [], "added": [], "changed": []}, diff
    # everything written went to the outputs folder
    assert (out / "skipped.csv").is_file() and split_path.is_relative_to(out_root)


def test_outputs_inside_the_collection_are_not_cached_there(messy_copy, monkeypatch):
    monkeypatch.setattr(paths, "OUTPUTS_DIR", messy_copy / "outputs")
    before = snapshot(messy_copy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.SkippedFilesWarning)
        data.open_collection(messy_copy)
    assert compare(before, snapshot(messy_copy)) == {"lost": [], "added": [], "changed": []}


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = io.save_json(tmp_path / "metrics.json", {"mAP": 0.5})

    def half_then_crash(tmp: str) -> None:
        Path(tmp).write_text('{"mAP": 0.')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(target, half_then_crash)
    assert json.loads(target.read_text()) == {"mAP": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np, pandas as pd
    from cbir_utils import io
    out = sys.argv[1]
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        io.save_csv(out + "/table.csv", pd.DataFrame({"i": np.full(20000, i)}))
        io.save_npy(out + "/vectors.npy", np.full((500, 128), i, dtype=np.float32))
    """
)


def test_killed_writer_never_leaves_a_half_written_file(tmp_path):
    """SIGKILL a process rewriting outputs in a loop: each file is always complete."""
    seen = set()
    for k in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3 + 0.17 * k)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        table = pd.read_csv(tmp_path / "table.csv")
        vec = np.load(tmp_path / "vectors.npy")
        assert len(table) == 20000 and table["i"].nunique() == 1
        assert vec.shape == (500, 128) and np.unique(vec).size == 1
        seen.add(int(table["i"].iloc[0]))
    assert len(seen) >= 2  # the loop really rewrote the files between kills
    # leftovers of killed writes are hidden temporary files, never the outputs' names
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} == {
        "table.csv",
        "vectors.npy",
    }


def test_run_folder_refuses_other_parameters(tmp_path):
    params = {"BACKBONE": "efficientnet_lite0", "IMAGE_SIZE": 96, "KS": [1, 5]}
    out = runs.start_run("nb", "run", params, root=tmp_path)
    io.save_json(out / "metrics.json", {"mAP": 0.42})
    saved = (out / "params.json").read_bytes()
    assert runs.start_run("nb", "run", dict(params), root=tmp_path) == out  # same: reused
    with pytest.raises(
        SettingsError, match=r"other parameters \(differing: IMAGE_SIZE; IMAGE_SIZE: 96 -> 128"
    ):
        runs.start_run("nb", "run", {**params, "IMAGE_SIZE": 128}, root=tmp_path)
    with pytest.raises(SettingsError, match="differing: MIRROR"):  # a new parameter counts too
        runs.start_run("nb", "run", {**params, "MIRROR": True}, root=tmp_path)
    assert (out / "params.json").read_bytes() == saved
    assert json.loads((out / "metrics.json").read_text()) == {"mAP": 0.42}
    versions = json.loads((out / "versions.json").read_text())
    assert versions["torch"] == runs.package_versions()["torch"] and "started" in versions


def test_params_file_is_claimed_by_one_run_only(tmp_path):
    target = tmp_path / "params.json"
    assert io.atomic_create_text(target, '{"A": 1}') is True
    assert io.atomic_create_text(target, '{"A": 2}') is False
    assert target.read_text() == '{"A": 1}' and [p.name for p in tmp_path.iterdir()] == [
        "params.json"
    ]


def test_split_is_never_replaced_silently(tmp_path, tiny_collection):
    col = data.load_collection(tiny_collection, progress=False)
    path = tmp_path / "split.csv"
    first = data.load_or_make_split(
        col, path, seed=0, val_frac=0.2, test_frac=0.2, heldout_frac=0.3
    )
    saved = path.read_bytes()
    with pytest.raises(ValueError, match="was made with"):
        data.load_or_make_split(col, path, seed=1, val_frac=0.2, test_frac=0.2, heldout_frac=0.3)
    fewer = data.Collection(col.root, col.items.iloc[1:].reset_index(drop=True))
    with pytest.raises(ValueError, match="other files"):
        data.load_or_make_split(fewer, path, seed=0, val_frac=0.2, test_frac=0.2, heldout_frac=0.3)
    assert path.read_bytes() == saved
    again = data.load_or_make_split(
        col, path, seed=0, val_frac=0.2, test_frac=0.2, heldout_frac=0.3
    )
    pd.testing.assert_frame_equal(first, again)


class _Evil:
    """A pickle that would run code when loaded without weights_only."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/cbir_pwned_by_pickle",))


def test_user_files_are_loaded_without_running_code(tmp_path):
    """Weights files and checkpoints are read with weights_only=True: a pickle that runs
    code is refused with a message, and nothing runs."""
    import os

    import torch

    from cbir_utils import runs
    from cbir_utils.engine import models
    from cbir_utils.errors import SettingsError

    marker = "/tmp/cbir_pwned_by_pickle"
    if os.path.exists(marker):
        os.unlink(marker)
    bad = tmp_path / "evil.pt"
    torch.save({"model": _Evil(), "meta": {}}, bad)
    with pytest.raises(models.WeightsFileError, match="cannot be loaded safely"):
        models.load_checkpoint(bad)
    with pytest.raises(models.WeightsFileError, match="cannot be loaded safely"):
        models.build_model("resnet18", str(bad))
    with pytest.raises(SettingsError, match="cannot be loaded safely"):
        runs.check_params({"BACKBONE": "resnet18", "WEIGHTS": str(bad)})
    assert not os.path.exists(marker)
    # our own checkpoints hold only tensors and plain values: they load safely
    net = models.build_model("resnet18", "none", n_classes=2)
    ok = models.save_checkpoint(
        tmp_path / "ok.pt",
        net,
        models.model_meta("resnet18", "none", "avg", 64, classes=["a", "b"]),
    )
    assert models.load_checkpoint(ok)[1]["backbone"] == "resnet18"


def test_an_installed_copy_writes_outputs_where_it_is_run_not_into_site_packages(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    from cbir_utils.paths import PROJECT_ROOT

    site = tmp_path / "site-packages" / "cbir_utils"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("")
    for name in ("paths.py", "errors.py"):
        shutil.copy(PROJECT_ROOT / "cbir_utils" / name, site / name)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBIR_")}
    env["PYTHONPATH"] = str(site.parent)
    out = subprocess.run(
        [sys.executable, "-c", "import cbir_utils.paths as p; print(p.PROJECT_ROOT); print(p.OUTPUTS_DIR)"],
        cwd=work, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    root, outputs = out.stdout.split()
    assert root == str(work.resolve()) and outputs == str(work.resolve() / "outputs")
