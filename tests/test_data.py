"""Collections, decoding, preprocessing and the split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cbir_utils.sources import data


def test_folder_collection(tiny_collection):
    col = data.load_collection(tiny_collection)
    assert len(col) == 20
    counts = col.scene_counts()
    assert counts["scene_astronaut"] == 3 and counts["scene_flower"] == 2
    assert all(r.split("/")[0] == s for r, s in zip(col.items["relpath"], col.scenes))
    assert all(p.is_file() for p in col.paths)


def test_nested_and_unlabelled(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "sub" / "x 1.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "y.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    (tmp_path / "notes.txt").write_text("not an image")
    col = data.load_collection(tmp_path)
    assert dict(zip(col.items["relpath"], col.scenes)) == {
        "a/sub/x 1.png": "a",
        "a/y.png": "a",
        "loose.png": data.UNLABELLED,
    }


def test_manifest(tmp_path, tiny_collection):
    col = data.load_collection(tiny_collection)
    manifest = tiny_collection / "manifest_test.csv"
    col.items[["relpath", "scene"]].rename(columns={"relpath": "path"}).to_csv(
        manifest, index=False
    )
    try:
        col2 = data.load_collection(manifest)
        assert list(col2.items["relpath"]) == list(col.items["relpath"])
        assert list(col2.scenes) == list(col.scenes)
    finally:
        manifest.unlink()


def test_manifest_missing_files_listed(tmp_path):
    m = tmp_path / "m.csv"
    pd.DataFrame({"path": ["nope1.jpg", "nope2.jpg"], "scene": ["a", "a"]}).to_csv(m, index=False)
    with pytest.raises(FileNotFoundError, match="(?s)2 missing file.*nope1.jpg"):
        data.load_collection(m)
    pd.DataFrame({"file": ["x"]}).to_csv(m, index=False)
    with pytest.raises(ValueError, match="'path' and 'scene'"):
        data.load_collection(m)


def test_missing_or_empty_collection(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.load_collection(tmp_path / "absent")
    (tmp_path / "empty_scene").mkdir()
    with pytest.raises(ValueError, match="No images found"):
        data.load_collection(tmp_path)


def test_load_image_modes(tmp_path):
    arr16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "g16.tif")
    im = data.load_image(tmp_path / "g16.tif")
    assert im.mode == "RGB" and np.asarray(im).max() == 255 and np.asarray(im).min() == 0
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgba.save(tmp_path / "a.png")
    assert np.asarray(data.load_image(tmp_path / "a.png")).min() == 255  # transparent -> white
    Image.new("CMYK", (10, 10), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert data.load_image(tmp_path / "c.jpg").mode == "RGB"


def test_preprocess_letterbox_keeps_whole_image():
    im = Image.new("RGB", (200, 100), (255, 255, 255))
    p = data.Preprocess(image_size=64, resize="letterbox", grayscale=True)
    assert p.prepare(im).size == (64, 32)  # long side resized, nothing cut
    t = p(im)
    assert t.shape == (3, 64, 64) and t.dtype == torch.float32
    # the white image fills the middle 32 rows; the padding is exactly the mean (zero)
    white = (1.0 - torch.tensor(p.mean)) / torch.tensor(p.std)
    assert torch.allclose(t[:, 16:48], white.view(3, 1, 1).expand(3, 32, 64), atol=1e-5)
    assert (t[:, :16] == 0).all() and (t[:, 48:] == 0).all()


def test_preprocess_center_crop_and_errors():
    im = Image.new("RGB", (300, 150))
    assert data.Preprocess(image_size=64, resize="center_crop")(im).shape == (3, 64, 64)
    with pytest.raises(ValueError, match="resize"):
        data.Preprocess(resize="stretch")


def _items(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{s}/{i}.jpg", s) for s, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["relpath", "scene"])


def test_split_properties():
    counts = {f"s{i:02d}": n for i, n in enumerate([1, 2, 2, 2, 3, 3, 4, 5, 6, 8] * 3)}
    items = _items(counts)
    split = data.make_split(items, seed=3, val_frac=0.2, test_frac=0.2, heldout_frac=0.3)
    assert list(split["relpath"]) == list(items["relpath"])
    by = split.groupby("split")["scene"].apply(set)
    # scene-disjoint: held-out scenes never appear in train/val/test
    assert not by["heldout"] & (by["train"] | by["val"] | by["test"])
    # study protocol: every val/test scene has a training image
    assert by["val"] <= by["train"] and by["test"] <= by["train"]
    # singletons are never held out or used for evaluation
    singles = {s for s, n in counts.items() if n == 1}
    assert singles <= by["train"] - by["heldout"]
    n_scenes = len(counts)
    assert abs(len(by["heldout"]) - round(0.3 * n_scenes)) <= 1
    seen = (split["split"] != "heldout").sum()
    assert abs((split["split"] == "val").sum() - 0.2 * seen) <= 1
    assert split.equals(
        data.make_split(items, seed=3, val_frac=0.2, test_frac=0.2, heldout_frac=0.3)
    )
    assert not split.equals(data.make_split(items, seed=4))


def test_split_saved_and_reused(tmp_path, tiny_collection):
    col = data.load_collection(tiny_collection)
    path = tmp_path / "split.csv"
    s1 = data.load_or_make_split(col, path, seed=0, val_frac=0.2, test_frac=0.2, heldout_frac=0.3)
    s2 = data.load_or_make_split(col, path, seed=0, val_frac=0.2, test_frac=0.2, heldout_frac=0.3)
    assert s1.equals(s2)
    with pytest.raises(ValueError, match="made with"):
        data.load_or_make_split(col, path, seed=1, val_frac=0.2, test_frac=0.2, heldout_frac=0.3)
