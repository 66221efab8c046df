"""Reproducibility: runs record what they used, and the same seed gives the same numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from robust_helpers import single_thread

from cbir_utils import runs
from cbir_utils.engine import features, models
from cbir_utils.evaluation import retrieval
from cbir_utils.learning import training
from cbir_utils.sources import data

METRICS = ["epoch", "stage", "split", "loss", "accuracy", "precision", "recall", "f1", "lr"]


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def _pipeline(collection, seed: int) -> tuple[pd.DataFrame, dict]:
    """Split, fresh model, descriptors and metrics, as notebook 01 computes them."""
    split = data.make_split(collection.items, seed=seed)
    model = models.build_model("efficientnet_lite0", "imagenet").eval()
    meta = models.model_meta("efficientnet_lite0", "imagenet", "avg", 64)
    desc = features.extract(
        model, collection.paths, models.preprocess_from_meta(meta), batch_size=7, progress=False
    )
    evals = retrieval.evaluate_protocols(desc, split, ks=(1, 5))
    return split, {"desc": desc, **{p: ev.to_dict() for p, ev in evals.items()}}


def test_same_seed_same_split_descriptors_and_metrics(tiny_collection):
    col = data.load_collection(tiny_collection, progress=False)
    split_a, a = _pipeline(col, seed=3)
    split_b, b = _pipeline(col, seed=3)
    pd.testing.assert_frame_equal(split_a, split_b)
    assert np.array_equal(a.pop("desc"), b.pop("desc"))  # bit for bit
    assert a == b and {"all", "study", "disjoint"} <= set(a)
    other = data.make_split(col.items, seed=4)
    assert not other["split"].equals(split_a["split"])  # the seed matters


def test_two_short_trainings_are_identical(tiny_collection, tmp_path):
    col = data.load_collection(tiny_collection, progress=False)
    split = data.make_split(col.items, seed=0)
    cfg = training.TrainConfig(
        backbone="resnet18", weights="none", image_size=32, batch_size=4, stages=(1, 1), seed=5
    )
    a = training.train(cfg, col, split, tmp_path / "a", progress=False, max_batches=1)
    b = training.train(cfg, col, split, tmp_path / "b", progress=False, max_batches=1)

    def weights(path):
        return torch.load(path, map_location="cpu", weights_only=False)["model"]

    sa, sb = weights(a.last_checkpoint), weights(b.last_checkpoint)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # bit for bit
    pd.testing.assert_frame_equal(a.history[METRICS], b.history[METRICS], check_exact=True)
    s1 = weights(tmp_path / "a" / "checkpoints" / "stage1.pt")
    assert not all(torch.equal(sa[k], s1[k]) for k in sa)  # the second epoch did change them


def test_run_records_parameters_versions_and_split(tiny_collection, tmp_path, monkeypatch):
    from cbir_utils import paths

    monkeypatch.setattr(paths, "OUTPUTS_DIR", tmp_path)
    params = runs.check_params(
        {"IMAGE_SIZE": "96", "KS": "1,5", "SPLIT_SEED": 2}, check_paths=False
    )
    out = runs.start_run("nb", "r", params, root=tmp_path)
    assert json.loads((out / "params.json").read_text()) == {
        "IMAGE_SIZE": 96, "KS": [1, 5], "SPLIT_SEED": 2,
    }  # fmt: skip
    versions = json.loads((out / "versions.json").read_text())
    for name in ("python", "torch", "torchvision", "numpy", "pillow", "pandas", "started"):
        assert versions[name] and versions[name] != "not installed", name
    col = data.load_collection(tiny_collection, progress=False)
    split, path = data.split_for(col, seed=2)
    assert path.parent == tmp_path / "splits" and path.with_suffix(".json").is_file()
    saved = pd.read_csv(path, dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(saved, split.astype(str))
    assert json.loads(path.with_suffix(".json").read_text())["seed"] == 2
    again, _ = data.split_for(col, seed=2)  # reused, not remade
    pd.testing.assert_frame_equal(again, saved)


def test_seed_everything_repeats_random_streams():
    runs.seed_everything(11)
    first = (np.random.rand(3), torch.rand(3))
    runs.seed_everything(11)
    assert np.array_equal(first[0], np.random.rand(3)) and torch.equal(first[1], torch.rand(3))
