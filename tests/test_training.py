"""Tests of cbir_utils.learning.training on a tiny synthetic collection (resnet18, random init, 64 px)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from cbir_utils import config
from cbir_utils.engine.models import load_checkpoint, preprocess_from_meta
from cbir_utils.errors import SettingsError
from cbir_utils.learning import training
from cbir_utils.learning.training import HISTORY_COLUMNS, TrainConfig, predict, train
from cbir_utils.sources.data import Preprocess, load_collection, load_image

SCENES = ("alpha", "beta", "gamma", "delta")
# Per scene: 2 train, 1 val, 1 test image.
SPLIT_OF = ("train", "train", "val", "test")


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        backbone="resnet18",
        weights="none",
        pooling="avg",
        image_size=64,
        resize="center_crop",
        descreen=0.0,
        augment="none",
        batch_size=4,
        stages=(1, 1),
        device="cpu",
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-scene x 4-image collection of distinct 64x64 PNGs, and its split."""
    root = tmp_path_factory.mktemp("coll")
    rng = np.random.default_rng(0)
    for s, scene in enumerate(SCENES):
        (root / scene).mkdir()
        base = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        base = np.kron(base, np.ones((4, 4, 1), dtype=np.uint8))  # blocky scene pattern
        base[8 + 8 * s : 24 + 8 * s, 8:40] = (255 - 60 * s, 40 * s, 200)  # a coloured bar
        for i in range(4):
            jitter = rng.integers(-12, 13, size=base.shape)
            img = np.clip(base.astype(int) + jitter, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / scene / f"{scene}_{i}.png")
    coll = load_collection(root)
    split = coll.items[["relpath", "scene"]].copy()
    split["split"] = [SPLIT_OF[int(Path(r).stem.split("_")[1])] for r in split["relpath"]]
    return coll, split


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """One complete stages=(1, 1) run, shared by several tests (read-only)."""
    coll, split = tiny
    out = tmp_path_factory.mktemp("run")
    result = train(tiny_config(), coll, split, out, progress=False)
    return out, result


def _val_paths(tiny) -> tuple[list[str], list[str]]:
    coll, split = tiny
    val = split[split["split"] == "val"].merge(coll.items, on=["relpath", "scene"])
    return val["path"].tolist(), val["scene"].tolist()


def test_train_writes_history_and_checkpoints(trained) -> None:
    out, result = trained
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.columns) == list(HISTORY_COLUMNS)
    assert len(hist) == 4
    assert hist["epoch"].tolist() == [1, 1, 2, 2]
    assert hist["stage"].tolist() == [1, 1, 2, 2]
    assert hist["split"].tolist() == ["train", "val", "train", "val"]
    assert hist[["loss", "accuracy", "precision", "recall", "f1"]].notna().all().all()
    assert (hist["lr"] == 1e-3).all()
    for name in ("best.pt", "last.pt", "stage1.pt", "stage2.pt"):
        assert (out / "checkpoints" / name).is_file()
    assert result.classes == sorted(SCENES)
    assert result.best_epoch in (1, 2)
    assert result.completed and result.seconds > 0
    pd.testing.assert_frame_equal(result.history.reset_index(drop=True), hist, check_dtype=False)
    # best.pt is the epoch with the best val F1 (ties: lower loss)
    val = hist[hist["split"] == "val"].sort_values(["f1", "loss"], ascending=[False, True])
    assert int(val["epoch"].iloc[0]) == result.best_epoch


def test_checkpoint_meta_and_preprocess(trained) -> None:
    out, result = trained
    _, meta, ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert meta["backbone"] == "resnet18" and meta["pooling"] == "avg"
    assert meta["classes"] == result.classes
    assert meta["epoch"] == ckpt["epoch"] == 2 and meta["stage"] == 2
    assert meta["train_config"] == tiny_config().to_dict()
    pre = preprocess_from_meta(meta)
    assert pre == Preprocess(image_size=64, resize="center_crop", grayscale=True, descreen=0.0)
    _, best_meta, best_ckpt = load_checkpoint(result.best_checkpoint)
    assert best_meta["epoch"] == best_ckpt["epoch"] == result.best_epoch
    _, s1_meta, _ = load_checkpoint(out / "checkpoints" / "stage1.pt")
    assert s1_meta["epoch"] == 1 and s1_meta["stage"] == 1


def test_checkpoint_rebuilds_trained_model(tiny, tmp_path, monkeypatch) -> None:
    """load_checkpoint(best.pt / last.pt) gives the outputs of the model the run ended with."""
    coll, split = tiny
    captured = {}
    orig = training.models.save_checkpoint

    def spy(path, model, meta, **state):
        captured["model"] = model
        return orig(path, model, meta, **state)

    monkeypatch.setattr(training.models, "save_checkpoint", spy)
    res = train(tiny_config(stages=(1,)), coll, split, tmp_path, progress=False)
    assert res.best_epoch == 1  # a single epoch: best == last == the live model
    live = captured["model"].eval()
    paths, _ = _val_paths(tiny)
    x = torch.stack([tiny_config().preprocess()(load_image(p)) for p in paths])
    with torch.inference_mode():
        want_desc, want_logits = live.descriptor(x), live(x)
    for name in ("best.pt", "last.pt"):
        model, meta, _ = load_checkpoint(tmp_path / "checkpoints" / name)
        model.eval()
        assert model.head.out_features == len(meta["classes"]) == len(SCENES)
        with torch.inference_mode():
            assert torch.allclose(model.descriptor(x), want_desc, atol=1e-5)
            assert torch.allclose(model(x), want_logits, atol=1e-5)


def test_resume_gives_identical_weights(trained, tiny, tmp_path, monkeypatch) -> None:
    out, full = trained
    coll, split = tiny
    # 1) stopped cleanly after epoch 1
    first = train(tiny_config(), coll, split, tmp_path, progress=False, stop_after_epochs=1)
    assert not first.completed and first.history["epoch"].max() == 1
    assert not (tmp_path / "checkpoints" / "stage2.pt").exists()
    # 2) killed in the middle of epoch 2 (after its training batches, before saving)
    calls = {"n": 0}
    orig = training.classification_scores

    def crash(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt("simulated kill")
        return orig(*args, **kw)

    monkeypatch.setattr(training, "classification_scores", crash)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(), coll, split, tmp_path, progress=False)
    monkeypatch.setattr(training, "classification_scores", orig)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    # 3) resumed to completion: epoch 2 is redone, same weights as the uninterrupted run
    resumed = train(tiny_config(), coll, split, tmp_path, progress=False)
    assert resumed.completed
    a = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    cols = [c for c in HISTORY_COLUMNS if c != "seconds"]
    pd.testing.assert_frame_equal(full.history[cols], resumed.history[cols])
    assert resumed.best_epoch == full.best_epoch
    # Resuming a finished run trains nothing and returns the same result.
    again = train(tiny_config(), coll, split, tmp_path, progress=False)
    pd.testing.assert_frame_equal(again.history[cols], resumed.history[cols])


def test_resume_with_other_config_raises(trained, tiny) -> None:
    out, _ = trained
    coll, split = tiny
    before = (out / "checkpoints" / "last.pt").stat().st_mtime_ns
    with pytest.raises(ValueError, match="another output folder"):
        train(tiny_config(lr=1e-4), coll, split, out, progress=False)
    with pytest.raises(ValueError, match="another output folder"):
        train(tiny_config(lr=1e-4), coll, split, out, progress=False, resume=False)
    other = split.copy()
    other.loc[other["split"] == "test", "split"] = "val"
    with pytest.raises(ValueError, match="another output folder"):
        train(tiny_config(), coll, other, out, progress=False)
    assert (out / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_val_history_matches_predict(trained, tiny) -> None:
    out, result = trained
    model, meta, _ = load_checkpoint(result.last_checkpoint)
    paths, scenes = _val_paths(tiny)
    y_pred = predict(model, paths, preprocess_from_meta(meta), batch_size=3, progress=False)
    y_true = np.array([meta["classes"].index(s) for s in scenes])
    assert y_pred.shape == (len(paths),) and y_pred.dtype == np.int64
    p, r, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=np.union1d(y_true, y_pred), average="macro", zero_division=0
    )
    row = result.history.query("split == 'val' and epoch == 2").iloc[0]
    assert row["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert row["precision"] == pytest.approx(p)
    assert row["recall"] == pytest.approx(r)
    assert row["f1"] == pytest.approx(f1)


@pytest.mark.parametrize(
    "kw",
    [
        {"augment": "press"},
        {"pooling": "gem"},
    ],
)
def test_options_run_one_epoch(tiny, tmp_path, kw) -> None:
    coll, split = tiny
    res = train(tiny_config(stages=(1,), **kw), coll, split, tmp_path, progress=False)
    assert len(res.history) == 2 and res.history["loss"].notna().all()
    assert (tmp_path / "checkpoints" / "best.pt").is_file()


def test_stage_lrs_and_max_batches(tiny, tmp_path) -> None:
    coll, split = tiny
    res = train(
        tiny_config(stage_lrs=(1e-3, 1e-4)), coll, split, tmp_path, progress=False, max_batches=1
    )
    assert res.history["lr"].tolist() == [1e-3, 1e-3, 1e-4, 1e-4]


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"augment": "press-nonexistent"}, "augment"),
        ({"backbone": "vgg16"}, "backbone"),
        ({"lr": 0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"stages": (30, 0)}, "stages"),
        ({"stages": ()}, "stages"),
        ({"stage_lrs": (1e-3,)}, "stage_lrs"),
        ({"image_size": 16}, "image_size"),
    ],
)
def test_invalid_config_raises(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_config(**kw)


def test_config_defaults_are_notebook_02s_recipe_and_round_trip() -> None:
    cfg = TrainConfig()
    assert (cfg.backbone, cfg.lr, cfg.batch_size) == ("sscd", 1e-3, 32)
    assert cfg.stages == (30, 50, 50) and cfg.epochs == 130
    assert cfg.resize == "letterbox" and cfg.grayscale and cfg.augment == "press"
    assert [cfg.stage_of(e) for e in (1, 30, 31, 80, 81, 130)] == [1, 1, 2, 2, 3, 3]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_augmentation_hook_is_registry() -> None:
    assert set(training.AUGMENTATIONS) == {"none", "press"}
    im = Image.new("RGB", (120, 90), (10, 20, 30))
    out = training.AUGMENTATIONS["press"](im)
    assert isinstance(out, Image.Image) and out.size != (0, 0)
    assert tuple(training.AUGMENTATIONS) == config.AUGMENTATIONS  # the names notebooks check
    with pytest.raises(SettingsError, match="'none', 'press'"):
        tiny_config(augment="_test")


def test_augmented_run_does_not_depend_on_num_workers(tiny, tmp_path) -> None:
    """Augmentation is seeded per draw, so worker processes give the same weights."""
    coll, split = tiny
    weights = []
    for nw in (0, 2):
        cfg = tiny_config(stages=(1,), augment="press", num_workers=nw)
        train(cfg, coll, split, tmp_path / f"w{nw}", progress=False, max_batches=1)
        weights.append(torch.load(tmp_path / f"w{nw}" / "checkpoints" / "last.pt")["model"])
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_head_lr_is_its_own_group_scaled_with_the_stages(tiny, tmp_path):
    """``head_lr``: the new head steps at head_lr, the pretrained layers at lr, and both
    follow ``stage_lrs`` (stage 2 at a tenth: head 1e-3, backbone 1e-5)."""
    coll, split = tiny
    cfg = tiny_config(lr=1e-4, head_lr=1e-2, stage_lrs=(1e-4, 1e-5))
    train(cfg, coll, split, tmp_path, progress=False)
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    lrs = sorted(g["lr"] for g in saved["optimizer"]["param_groups"])
    assert lrs == pytest.approx([1e-5, 1e-3])
    n_head = sum(len(g["params"]) for g in saved["optimizer"]["param_groups"] if g["lr_scale"] > 1)
    assert n_head == 2  # the head's weight and bias
    with pytest.raises(ValueError, match="head_lr"):
        tiny_config(head_lr=0)
