"""Descriptor extraction, caching, and retrieval of planted duplicates."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import ImageOps

from cbir_utils.engine import features, models
from cbir_utils.evaluation import retrieval
from cbir_utils.sources import data

META = models.model_meta("efficientnet_lite0", "imagenet", "avg", 160)


@pytest.fixture(scope="module")
def prep():
    return data.Preprocess(
        160, "letterbox", True, 0.0, **models.normalisation_for("efficientnet_lite0")
    )


@pytest.fixture(scope="module")
def tiny_desc(tiny_collection, lite0, prep):
    col = data.load_collection(tiny_collection)
    return col, features.extract(lite0, col.paths, prep, batch_size=8, progress=False)


def test_shapes_and_unit_norm(tiny_desc):
    col, desc = tiny_desc
    assert desc.shape == (len(col), 1280) and desc.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)


def test_planted_duplicates_are_found(tiny_desc):
    col, desc = tiny_desc
    scenes = col.scenes
    q = np.arange(len(col))
    ev = retrieval.evaluate(desc, scenes, q, threshold=0.5, ks=(1, 2))
    # every printing's nearest neighbour is another printing of its own photo
    assert ev.ranking.precision_at_k[1] == 1.0
    assert ev.ranking.map > 0.9
    top = retrieval.topk_table(col.items["relpath"], scenes, q, ev.indices, ev.scores, 2)
    assert list(top.columns) == ["query", "rank", "candidate", "score", "relevant"]
    assert (top["query"] != top["candidate"]).all()  # a query never finds itself
    assert top.loc[top["rank"] == 1, "relevant"].all()


def test_logits_output(tiny_collection, lite0, prep):
    col = data.load_collection(tiny_collection)
    net = models.build_model("resnet18", "none", n_classes=4)
    out = features.extract(net, col.paths[:3], prep, output="logits", progress=False)
    assert out.shape == (3, 4)
    with pytest.raises(ValueError, match="Unknown output"):
        features.extract(lite0, col.paths[:1], prep, output="probs")


def test_mirror_invariance(tmp_path, lite0, prep):
    from tests.conftest import source_photo

    im = source_photo("astronaut").resize((200, 200))
    im.save(tmp_path / "a.png")
    ImageOps.mirror(im).save(tmp_path / "b.png")
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    plain = features.extract(lite0, paths, prep, progress=False)
    inv = features.extract(lite0, paths, prep, mirror=True, progress=False)
    assert float(plain[0] @ plain[1]) < 0.99
    assert float(inv[0] @ inv[1]) > 0.9999


def test_cache_reuses_and_adds_only_new_files(tmp_path, tiny_collection, lite0, prep):
    col = data.load_collection(tiny_collection)
    paths = col.paths
    cache = tmp_path / "cache"
    s1 = features.ExtractStats()
    d1 = features.extract_cached(lite0, paths[:10], prep, cache, META, stats=s1, progress=False)
    assert (s1.computed, s1.cached) == (10, 0)
    # a renamed copy of a file is recognised by its content
    shutil.copy(paths[0], tmp_path / "renamed.jpg")
    s2 = features.ExtractStats()
    d2 = features.extract_cached(
        lite0, paths[:12] + [tmp_path / "renamed.jpg"], prep, cache, META, stats=s2, progress=False
    )
    assert (s2.computed, s2.cached) == (2, 11)
    np.testing.assert_allclose(d2[:10], d1, atol=1e-6)
    np.testing.assert_allclose(d2[12], d1[0], atol=1e-6)
    # another model identity does not reuse these vectors
    s3 = features.ExtractStats()
    other = dict(META, pooling="gem")
    features.extract_cached(lite0, paths[:2], prep, cache, other, stats=s3, progress=False)
    assert s3.computed == 2
