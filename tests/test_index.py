"""Saved index: searching with new images and image regions, adding images incrementally."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageOps

from cbir_utils.engine import features
from cbir_utils.engine import index as I
from cbir_utils.sources import data

SIZE = 128


@pytest.fixture(scope="module")
def settings():
    # the shared lite0 fixture's settings (the default backbone is tested in test_cli/test_sscd)
    return I.model_settings("efficientnet_lite0", "imagenet", image_size=SIZE, descreen=0.0)


@pytest.fixture(scope="module")
def held_out(tiny_collection):
    """The tiny collection without its printings number 1 (kept as new queries)."""
    col = data.load_collection(tiny_collection)
    new = col.items["relpath"].str.endswith("_1.jpg").to_numpy()
    kept = data.Collection(root=col.root, items=col.items[~new].reset_index(drop=True))
    return kept, col.items[new].reset_index(drop=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory, held_out, settings, lite0):
    kept, _ = held_out
    cache = tmp_path_factory.mktemp("cache")
    stats = features.ExtractStats()
    meta, ckpt = settings
    index = I.Index.build(
        kept, meta, ckpt, cache_dir=cache, model=lite0, stats=stats, batch_size=8, progress=False
    )
    return index, cache, stats


def test_build_save_load(built, tmp_path):
    index, _, stats = built
    assert len(index) == 13 and index.vectors.shape == (13, 1280)
    assert (stats.computed, stats.cached) == (13, 0)
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)
    assert index.has_labels and set(index.scenes) == {f"scene_{n}" for n in (
        "astronaut", "camera", "coffee", "chelsea", "rocket", "china", "flower")}  # fmt: skip
    index.save(tmp_path / "idx")
    header = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert header["n_images"] == 13 and header["meta"]["backbone"] == "efficientnet_lite0"
    assert header["preprocess"]["image_size"] == SIZE
    back = I.Index.load(tmp_path / "idx")
    np.testing.assert_array_equal(back.vectors, index.vectors)
    assert back.items.equals(index.items) and back.meta == index.meta
    # saving again after a change writes new data files and removes the old ones
    back.remove([back.relpaths[0]])
    back.save(tmp_path / "idx")
    assert len(list((tmp_path / "idx").glob("vectors-*.npy"))) == 1
    assert len(I.Index.load(tmp_path / "idx")) == 12
    assert I.resolve_index(tmp_path / "idx") == (tmp_path / "idx").resolve()


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No index"):
        I.Index.load(tmp_path)
    (tmp_path / "index.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="format"):
        I.Index.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="No index"):
        I.resolve_index(tmp_path / "nowhere")


def test_new_images_find_their_scene(built, held_out, lite0):
    index, cache, _ = built
    _, new = held_out
    table = index.search(new["path"].tolist(), k=3, cache_dir=cache, progress=False)
    # ranked by the index's pipeline (notebook 01's): verified by local features too
    assert list(table.columns) == [
        "query", "rank", "candidate", "score", "scene", "path", "inliers"
    ]  # fmt: skip
    assert index.config.scales == (1.0,) and index.config.rerank
    top1 = table[table["rank"] == 1].set_index("query")["scene"]
    expected = new.set_index("path")["scene"]
    assert (top1 == expected.loc[top1.index]).all() and len(top1) == len(new)
    assert (table.groupby("query")["score"].diff().dropna() <= 0).all()  # best first


def test_query_with_an_indexed_file_leaves_it_out(built, lite0):
    index, cache, _ = built
    q = index.paths[0]
    t = index.search([q], k=2, cache_dir=cache, progress=False)
    assert index.relpaths[0] not in set(t["candidate"])
    t = index.search([q], k=2, cache_dir=cache, exclude_self=False, progress=False)
    assert t["candidate"].tolist()[0] == index.relpaths[0]  # itself, first
    assert t["score"][0] > 1.5 and t["inliers"][0] > t["inliers"][1]  # verified by itself


def test_region_of_a_page_finds_its_photo(built, tiny_collection, tmp_path, lite0):
    """A montage page with two printings side by side: each box finds its own scene."""
    index, cache, _ = built
    left = Image.open(tiny_collection / "scene_coffee" / "coffee_1.jpg").convert("L")
    right = ImageOps.mirror(Image.open(tiny_collection / "scene_rocket" / "rocket_1.jpg")).convert(
        "L"
    )
    page = Image.new("L", (520, 300), 235)
    page.paste(left, (10, 20))
    page.paste(right, (270, 20))
    page.save(tmp_path / "page.png")
    lw, lh = left.size
    rw, rh = right.size
    for box, scene in (
        ((10, 20, 10 + lw, 20 + lh), "scene_coffee"),
        ((270, 20, 270 + rw, 20 + rh), "scene_rocket"),
    ):
        t = index.search([tmp_path / "page.png"], k=1, box=box, progress=False)
        assert t["scene"][0] == scene
    with pytest.raises(ValueError, match="outside"):
        index.search([tmp_path / "page.png"], k=1, box=(600, 0, 700, 50), progress=False)


def test_boxes():
    assert I.parse_box("1, 2,30,40.5") == (1.0, 2.0, 30.0, 40.5)
    for bad in ("1,2,3", "a,b,c,d", ""):
        with pytest.raises(ValueError, match="four numbers"):
            I.parse_box(bad)
    im = Image.new("RGB", (100, 50))
    assert I.crop_box(im, (10, 5, 60, 45)).size == (50, 40)
    assert I.crop_box(im, (-20, -20, 500, 500)).size == (100, 50)  # clipped to the image
    with pytest.raises(ValueError, match="empty"):
        I.crop_box(im, (50, 5, 10, 45))


def test_add_computes_only_the_new_images(built, held_out, tmp_path, lite0):
    index, cache, _ = built
    _, new = held_out
    grown = I.Index(
        index.vectors.copy(), index.items.copy(), index.meta, root=index.root, _model=lite0
    )
    before = grown.vectors.copy()
    shutil.rmtree(cache)  # even with no cache at all, the indexed images are not recomputed
    extra = tmp_path / "flipped_camera.png"
    ImageOps.mirror(Image.open(new["path"][1])).save(extra)
    stats = features.ExtractStats()
    added = new["path"].tolist()[:3] + [str(extra)]
    report = grown.add(added, ["s1", "s2", "s3", ""], cache_dir=cache, stats=stats, progress=False)
    assert (stats.computed, stats.cached) == (4, 0)
    assert (report.added, report.replaced, report.unchanged) == (4, 0, 0)
    assert len(grown) == 17
    np.testing.assert_array_equal(grown.vectors[:13], before)  # old rows untouched
    assert grown.relpaths[13] == new["relpath"][0]  # inside the root: relative name
    assert grown.relpaths[16] == extra.resolve().as_posix()  # outside: absolute name
    # adding the same files again computes nothing
    again = features.ExtractStats()
    report = grown.add(added, cache_dir=cache, stats=again, progress=False)
    assert report.unchanged == 4 and again.computed == 0 and len(grown) == 17
    # a file changed in place gets a new vector, in place
    old_vec = grown.vectors[16].copy()
    ImageOps.grayscale(Image.open(new["path"][2])).rotate(90, expand=True).save(extra)
    changed = features.ExtractStats()
    report = grown.add([extra], cache_dir=cache, stats=changed, progress=False)
    assert (report.replaced, changed.computed, len(grown)) == (1, 1, 17)
    assert not np.allclose(grown.vectors[16], old_vec, atol=1e-3)


def test_update_from_the_folder(built, tiny_collection, lite0, tmp_path):
    index, cache, _ = built
    grown = I.Index(
        index.vectors.copy(), index.items.copy(), index.meta, root=index.root, _model=lite0
    )
    stats = features.ExtractStats()
    report = grown.update(tiny_collection, cache_dir=tmp_path / "c2", stats=stats, progress=False)
    assert (report.added, report.unchanged, stats.computed) == (7, 13, 7)
    assert sorted(grown.relpaths) == sorted(data.load_collection(tiny_collection).items["relpath"])
    assert dict(zip(grown.relpaths, grown.scenes))["scene_camera/camera_1.jpg"] == "scene_camera"


def test_from_vectors_and_settings(tiny_collection, settings):
    meta, _ = settings
    col = data.load_collection(tiny_collection)
    with pytest.raises(ValueError, match="vectors for"):
        I.Index.from_vectors(np.zeros((3, 4)), col, meta)
    idx = I.Index.from_vectors(np.eye(len(col), 8, dtype=np.float32), col, meta)
    assert idx.same_settings(meta, False, "descriptor")
    assert not idx.same_settings({**meta, "pooling": "gem"}, False, "descriptor")
    assert not idx.same_settings(meta, True, "descriptor")
    with pytest.raises(ValueError, match="resize"):
        I.model_settings(resize="stretch")
    with pytest.raises(FileNotFoundError, match="Checkpoint"):
        I.model_settings(checkpoint=tiny_collection / "none.pt")


def test_an_index_saved_before_the_whitening_shrinkage_is_not_fitted_again(
    built, tmp_path, monkeypatch
):
    """An index written before ``whiten_shrinkage`` existed keeps ranking as it was made
    (0.1), from its saved pipeline: upgrading must not refit it (at a million images the
    verification graph takes hours)."""
    index, _, _ = built
    index.fitted(progress=False)
    index.save(tmp_path / "idx")
    for name, key in (("index.json", "pipeline"), ("pipeline.json", "config")):
        f = tmp_path / "idx" / name
        saved = json.loads(f.read_text())
        del saved[key]["whiten_shrinkage"]  # as written before the setting
        f.write_text(json.dumps(saved))
    back = I.Index.load(tmp_path / "idx")
    assert back.config.whiten_shrinkage == 0.1

    def refit(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(I.P.FittedPipeline, "fit", refit)
    assert back.fitted(progress=False).config == back.config
