"""Fast fine-tuning: learned whitening on frozen descriptors, saved as a usable checkpoint."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cbir_utils.engine import features, models
from cbir_utils.evaluation import retrieval
from cbir_utils.learning import fast_finetune
from cbir_utils.learning.fast_finetune import FastConfig, Projection, fit_projection
from cbir_utils.sources import data

# the small ImageNet network of the tests (FastConfig's defaults are notebook 02's SSCD)
LITE = dict(backbone="efficientnet_lite0", weights="imagenet", pooling="avg", descreen=0.0,
            reprint_views=0, head_views=0, stages=())  # fmt: skip


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_within_scene_covariance_is_the_mean_pair_difference():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0], [5.0, 5.0]])
    labels = np.array(["a", "a", "a", "b"])
    # pairs of scene a: (0,1) d=(-2,0); (0,2) d=(-1,-3); (1,2) d=(1,-3)
    d = np.array([[-2.0, 0.0], [-1.0, -3.0], [1.0, -3.0]])
    expected = d.T @ d / 3  # [[2, 0], [0, 6]]
    r = fast_finetune._scatter_rows(x, labels)  # what the learned whitening's covariance uses
    got = r.T @ r
    np.testing.assert_allclose(got, expected)
    np.testing.assert_allclose(got, [[2.0, 0.0], [0.0, 6.0]])
    with pytest.raises(ValueError, match="two training views"):
        fast_finetune._scatter_rows(x[2:], labels[2:])


def test_no_whitening_keeps_the_centred_geometry(rng):
    x = unit(rng.standard_normal((40, 6)))
    scenes = np.repeat(np.arange(20), 2)
    p = fit_projection(x, scenes, dim=0, shrinkage=1.0)
    c = x - x.mean(0)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    y = p(x)
    np.testing.assert_allclose(y @ y.T, c @ c.T, atol=1e-5)  # a rotation of the centred data
    assert p(x[:3]).shape == (3, 6)
    assert fit_projection(x, scenes, dim=2, shrinkage=1.0).dim == 2


def test_learned_whitening_suppresses_the_nuisance_direction(rng):
    """Printings of a scene differ mostly along a few nuisance axes (tone, halftone...):
    whitening their differences must bring same-scene images together, on new scenes too."""

    def scenes(n_scenes: int, seed: int):
        g = np.random.default_rng(seed)
        centres = g.standard_normal((n_scenes, 16))
        x, y = [], []
        for s, c in enumerate(centres):
            for _ in range(3):
                v = c + 0.2 * g.standard_normal(16)
                v[:3] += 4.0 * g.standard_normal(3)  # strong shared nuisance on axes 0-2
                x.append(v)
                y.append(s)
        return unit(x), np.array(y)

    x_tr, y_tr = scenes(30, 1)
    x_te, y_te = scenes(20, 2)  # scenes never seen in fitting
    p = fit_projection(x_tr, y_tr, dim=12, shrinkage=0.1)

    def mean_ap(z, y):
        q = np.arange(len(z))
        ev = retrieval.evaluate(z, y.astype(str), q, threshold=0.5)
        return ev.ranking.map

    before, after = mean_ap(x_te.astype(np.float32), y_te), mean_ap(p(x_te), y_te)
    assert before < 0.6 and after > 0.9, (before, after)


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="backbone must be one of"):
        FastConfig(backbone="vgg16")
    with pytest.raises(ValueError, match="folds"):
        FastConfig(folds=1)
    with pytest.raises(ValueError, match="shrinkages"):
        FastConfig(shrinkages=(1.5,))
    c = FastConfig(dims=(32, 0), image_size=96)
    assert FastConfig.from_dict(c.to_dict()) == c
    from cbir_utils.learning.training import TrainConfig

    t = TrainConfig(backbone="efficientnet_lite0", image_size=160, stages=(1,), num_workers=0)
    f = FastConfig.from_train_config(t)
    assert (f.backbone, f.image_size, f.resize, f.pooling) == (
        "efficientnet_lite0",
        160,
        "letterbox",
        "gem",
    )


@pytest.fixture(scope="module")
def tiny_split(tiny_collection):
    col = data.load_collection(tiny_collection)
    rows = []
    for rel, scene in zip(col.items["relpath"], col.items["scene"]):
        v = int(rel.rsplit("_", 1)[1].split(".")[0])
        split = "heldout" if scene == "scene_flower" else ("val" if v == 2 else "train")
        rows.append({"relpath": rel, "scene": scene, "split": split})
    return col, pd.DataFrame(rows)


def test_fast_finetune_checkpoint_is_usable_for_retrieval(tmp_path, tiny_split, lite0):
    col, split = tiny_split
    cfg = FastConfig(
        **LITE,
        image_size=64,
        resize="letterbox",
        dims=(8, 0),
        shrinkages=(0.5, 1.0),
        num_workers=0,
    )
    res = fast_finetune.fast_finetune(cfg, col, split, tmp_path / "run", progress=False)
    assert res.checkpoint.exists() and len(res.classes) == 6  # flower is held out
    assert len(res.candidates) == 1 + 2 * 2  # none + shrinkages x dims
    assert res.cv_map == res.candidates["cv_map"].max() >= res.baseline_cv_map
    model, meta, _ = models.load_checkpoint(res.checkpoint)
    assert meta["classes"] == res.classes
    assert meta["proj_dim"] == res.dim and res.history is None  # no stages: closed form only
    pre = models.preprocess_from_meta(meta)
    desc = features.extract(model, col.paths, pre, progress=False)
    assert desc.shape == (len(col), res.dim)
    # the checkpoint reproduces "pretrained descriptor -> projection" exactly
    plain = features.extract(lite0, col.paths, pre, progress=False)
    state = torch.load(res.checkpoint, weights_only=False)["model"]
    w, m = state["proj.linear.weight"].numpy(), state["proj.mean"].numpy()
    proj = Projection(w, m)(plain)  # the identity when no projection was chosen
    np.testing.assert_allclose(desc, proj, atol=1e-4)
    # logits: the head predicts the scene of training images (nearest scene mean)
    logits = features.extract(model, col.paths, pre, output="logits", progress=False)
    train = (split["split"] == "train").to_numpy()
    pred = np.array(res.classes)[logits[train].argmax(1)]
    assert (pred == split["scene"].to_numpy()[train]).mean() >= 0.9


def test_scene_folds_keep_scenes_whole():
    labels = np.array(list("aabbbcdddde"))
    folds = fast_finetune.scene_folds(labels, 3, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(labels)))
    for f in folds:
        others = np.setdiff1d(np.arange(len(labels)), f)
        assert not set(labels[f]) & set(labels[others])  # a scene is in one fold only


def test_cross_validation_prefers_the_projection_that_generalises():
    # the planted problem above: the nuisance axes must be whitened away
    g = np.random.default_rng(5)
    x, y = [], []
    for s, c in enumerate(g.standard_normal((40, 16))):
        for _ in range(3):
            v = c + 0.2 * g.standard_normal(16)
            v[:3] += 4.0 * g.standard_normal(3)
            x.append(v)
            y.append(f"s{s}")
    x, y = unit(x).astype(np.float32), np.array(y, dtype=object)
    table = fast_finetune.cross_validate([x], y, (12, 0), (0.1, 1.0), folds=4)
    assert len(table) == 1 + 2 * 2
    best = table.sort_values("cv_map").iloc[-1]
    none = table[table["method"] == "none"]["cv_map"].item()
    assert best["method"] == "lw" and best["shrinkage"] == 0.1
    assert best["cv_map"] > none + 0.2


def test_query_map_matches_the_metrics_module(rng):
    from cbir_utils.evaluation import metrics

    x = unit(rng.standard_normal((30, 5))).astype(np.float32)
    y = np.array([f"s{i % 7}" for i in range(30)], dtype=object)
    q = np.arange(0, 30, 3)
    got, n = fast_finetune._query_map(x, y, q)
    scores = x[q] @ x.T
    mask = np.ones_like(scores, dtype=bool)
    mask[np.arange(len(q)), q] = False
    ref = metrics.retrieval_metrics(scores, y[q][:, None] == y[None, :], mask=mask, ks=(1,))
    assert n == ref.n_queries and got == pytest.approx(ref.map, abs=1e-9)


def test_reprint_augmentation_becomes_extra_views():
    """``augment="press"`` in notebook 02 gives the frozen path REPRINT_VIEWS reprints per
    image; each view of an image is the same every time (so it is cached), views differ."""
    from cbir_utils.learning.fast_finetune import REPRINT_VIEWS, ReprintedPreprocess
    from cbir_utils.learning.training import TrainConfig
    from tests.conftest import source_photo

    press = TrainConfig(backbone="sscd", augment="press", image_size=96)
    f = FastConfig.from_train_config(press)
    assert f.reprint_views == REPRINT_VIEWS > 0
    assert FastConfig.from_train_config(TrainConfig(augment="none")).reprint_views == 0
    with pytest.raises(ValueError, match="reprint_views"):
        FastConfig(reprint_views=-1)
    pre = models.preprocess_for("sscd", 96, "letterbox")
    im = source_photo("camera")
    v0, v1 = ReprintedPreprocess(pre, 0), ReprintedPreprocess(pre, 1)
    assert torch.equal(v0(im), ReprintedPreprocess(pre, 0)(im))  # reproducible
    assert not torch.equal(v0(im), v1(im)) and not torch.equal(v0(im), pre(im))
    assert v0.to_dict() != v1.to_dict() != pre.to_dict()  # cached apart
    # notebook 02's default: a share of the views degraded further as archive scans
    assert FastConfig().archive_p == f.archive_p == 0.3
    archive = ReprintedPreprocess(pre, 0, archive_p=1.0)
    assert torch.equal(archive(im), ReprintedPreprocess(pre, 0, archive_p=1.0)(im))
    assert not torch.equal(archive(im), v0(im)) and archive.to_dict() != v0.to_dict()
    with pytest.raises(ValueError, match="archive_p"):
        FastConfig(archive_p=1.5)


def test_trained_head_learns_from_an_uninformed_start(tiny_split, lite0):
    """The study's recipe on a frozen trunk: from the identity projection and random scene
    centres, the head's validation loss falls and its accuracy rises far above chance."""
    from cbir_utils.learning.head import HeadNet, train_head

    col, split = tiny_split
    pre = models.preprocess_for("efficientnet_lite0", 64, "letterbox")
    rows = split.merge(col.items[["relpath", "path"]], on="relpath")
    train, val = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    classes = sorted(set(train["scene"]))
    y_tr = train["scene"].map(classes.index).to_numpy()
    y_val = val["scene"].map(classes.index).to_numpy()
    views = [features.extract(lite0, train["path"].tolist(), pre, progress=False)]
    for v in range(2):
        rp = fast_finetune.ReprintedPreprocess(pre, v)
        views.append(features.extract(lite0, train["path"].tolist(), rp, progress=False))
    x_val = features.extract(lite0, val["path"].tolist(), pre, progress=False)
    d = views[0].shape[1]
    g = np.random.default_rng(0)
    init = HeadNet(np.eye(d, dtype=np.float32), np.zeros(d), g.standard_normal((len(classes), d)))
    res = train_head(views, y_tr, x_val, y_val, init, stages=(10, 20), batch_size=4, seed=0,
                     progress=False)  # fmt: skip
    h = res.history
    assert len(h) == 2 * 30 and list(h["stage"].unique()) == [1, 2]
    val_h = h[h["split"] == "val"].set_index("epoch")
    assert val_h.loc[30, "loss"] < 0.5 * val_h.loc[1, "loss"]
    with torch.no_grad():  # before training: random centres, near chance (1/6)
        before = (init(torch.as_tensor(x_val)).argmax(1).numpy() == y_val).mean()
    assert before < 0.5 and val_h["accuracy"].iloc[-5:].min() >= 0.8
    assert 1 <= res.best_epoch <= 30
    again = train_head(views, y_tr, x_val, y_val, init, stages=(10, 20), batch_size=4, seed=0,
                       progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(h, again.history)  # reproducible for a seed


def test_fast_finetune_trains_the_head_and_writes_its_curves(tmp_path, tiny_split):
    from cbir_utils.evidence import plots

    col, split = tiny_split
    cfg = FastConfig(**{**LITE, "head_views": 2, "stages": (2, 3)}, image_size=64,
                     resize="letterbox", dims=(8,), shrinkages=(0.5,), batch_size=8,
                     num_workers=0)  # fmt: skip
    res = fast_finetune.fast_finetune(cfg, col, split, tmp_path / "run", progress=False)
    history = pd.read_csv(tmp_path / "run" / "history.csv")  # read back
    assert len(history) == 2 * 5 and set(history["split"]) == {"train", "val"}
    assert history["stage"].tolist()[::2] == [1, 1, 2, 2, 2] and 1 <= res.best_epoch <= 5
    for name in ("best", "last", "closed_form"):
        model, meta, _ = models.load_checkpoint(tmp_path / "run" / "checkpoints" / f"{name}.pt")
        assert meta["proj_dim"] == res.dim and meta["projection"]["trained_epochs"] == 5
    figs = plots.training_curves(history, path_prefix=tmp_path / "run" / "training")
    assert set(figs) >= {"loss", "precision", "recall", "f1"}
    assert (tmp_path / "run" / "training_loss.png").stat().st_size > 10_000


def test_the_frozen_path_takes_the_study_schedule():
    from cbir_utils.learning.training import TrainConfig

    study = FastConfig.from_train_config(TrainConfig(backbone="sscd", augment="press"))
    assert study.stages == (30, 50, 50) and study.lr == 1e-3
    assert study.head_views == fast_finetune.HEAD_VIEWS >= study.reprint_views
    with pytest.raises(ValueError, match="stages"):
        FastConfig(stages=(30, 0))
