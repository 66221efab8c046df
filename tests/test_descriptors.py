"""Descriptor post-processing (whitening, query expansion, multi-scale) and descreening."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import source_photo
from PIL import Image

from cbir_utils.engine import descriptors as D
from cbir_utils.engine import features, models
from cbir_utils.sources import data
from cbir_utils.sources.data import Preprocess
from cbir_utils.sources.demo import halftone


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --------------------------------------------------------------------------- whitening


def test_whitening_decorrelates_to_unit_variance(rng):
    # correlated, anisotropic data: whitening (no shrinkage) gives identity covariance
    a = rng.normal(size=(500, 3)) * [5.0, 1.0, 0.2]
    x = (a @ np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=float)).astype(np.float32)
    w = D.fit_whitening(x, shrinkage=0.0)
    y = (x - w.mean) @ w.projection
    assert np.allclose(np.cov(y, rowvar=False), np.eye(3), atol=1e-3)
    assert np.all(np.diff(w.eigenvalues) <= 0)
    out = w.apply(x)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_whitening_shrinkage_runs_from_full_whitening_to_a_plain_projection(rng):
    # shrinkage 1: every kept direction scaled alike, so the output is the PCA projection
    # of the centred descriptors, normalised; in between, the weakest direction's weight
    # relative to the strongest falls as shrinkage rises
    a = rng.normal(size=(400, 3)) * [5.0, 1.0, 0.2]
    x = a.astype(np.float32)
    flat = D.fit_whitening(x, shrinkage=1.0)
    pca = (x - flat.mean) @ (flat.projection / np.linalg.norm(flat.projection, axis=0))
    assert np.allclose(flat.apply(x), pca / np.linalg.norm(pca, axis=1, keepdims=True), atol=1e-5)

    def weak_over_strong(shrinkage):
        norms = np.linalg.norm(D.fit_whitening(x, shrinkage=shrinkage).projection, axis=0)
        return norms[-1] / norms[0]

    ratios = [weak_over_strong(s) for s in (0.0, 0.1, 0.7, 1.0)]
    assert ratios[0] == pytest.approx(25.0, rel=0.1)  # 1 / sqrt(0.04 / 25): full whitening
    assert ratios[0] > ratios[1] > ratios[2] > ratios[3] == pytest.approx(1.0)


def test_whitening_caps_dimension_with_few_images(rng):
    x = _unit_rows(rng, 10, 64)
    w = D.fit_whitening(x, dim=32)
    assert w.dim == 9  # N - 1 directions exist
    assert w.apply(x).shape == (10, 9)
    assert D.fit_whitening(x, dim=4).dim == 4
    with pytest.raises(ValueError, match="dimension"):
        w.apply(x[:, :10])
    with pytest.raises(ValueError, match="shrinkage"):
        D.fit_whitening(x, shrinkage=2.0)


def test_whitening_removes_a_shared_nuisance_direction(rng):
    # every descriptor carries the same strong component (e.g. "a halftoned page"): plain
    # cosine sees all images as alike; whitening learned on the collection removes it
    scenes = np.repeat(np.arange(20), 2)
    centres = rng.normal(size=(20, 32))
    x = centres[scenes] + 0.3 * rng.normal(size=(40, 32)) + 12.0 * np.ones(32)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    xw = D.fit_whitening(x, dim=16).apply(x)

    def top1(v):
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        return (scenes[s.argmax(1)] == scenes).mean()

    def gap(v):
        s = v @ v.T
        same = (scenes[:, None] == scenes[None, :]) & ~np.eye(40, dtype=bool)
        return s[same].mean() - s[scenes[:, None] != scenes[None, :]].mean()

    assert gap(xw) > 3 * gap(x)
    assert top1(xw) >= top1(x)


# --------------------------------------------------------------------------- query expansion


def test_alpha_query_expansion_by_hand():  # αQE = neighbour_mean over the database
    db = np.array([[1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32)
    q = np.array([[1, 0]], dtype=np.float32)
    # k=1: nearest is db[0] itself (cos 1): q' = q + 1**3 * db[0]
    assert np.allclose(D.neighbour_mean(q, db, 1, 3.0), [[1, 0]])
    # the query is db[0]: excluded; nearest other is db[1], cos 0.6, weight 0.216
    got = D.neighbour_mean(q, db, 1, 3.0, np.array([0]))
    want = np.array([1 + 0.216 * 0.6, 0.216 * 0.8])
    assert np.allclose(got, [want / np.linalg.norm(want)], atol=1e-6)
    # k=0 is the identity (renormalised); negative cosines get no weight
    assert np.allclose(D.neighbour_mean(q, db, 0, 3.0), q)
    far = D.neighbour_mean(np.array([[-1, 0]], np.float32), db[2:], 1, 3.0)
    assert np.allclose(far, [[-1, 0]])


def test_database_augmentation_pulls_scene_members_together(rng):
    scenes = np.repeat(np.arange(10), 3)
    x = np.repeat(rng.normal(size=(10, 16)), 3, axis=0) + 0.6 * rng.normal(size=(30, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    same = (scenes[:, None] == scenes[None, :]) & ~np.eye(30, dtype=bool)
    before = (x @ x.T)[same].mean()
    xa = D.neighbour_mean(x, x, 2, 1.0, np.arange(len(x)))  # αDBA
    assert (xa @ xa.T)[same].mean() > before
    assert np.allclose(np.linalg.norm(xa, axis=1), 1.0, atol=1e-5)


def test_neighbour_mean_by_hand_and_without_a_dense_matrix(rng):
    x = _unit_rows(rng, 12, 8)
    got = D.neighbour_mean(x[[0, 5]], x, 2, 3.0, np.array([0, 5]))
    sims = x[[0, 5]] @ x.T  # the reference, dense: fine in a test
    sims[[0, 1], [0, 5]] = -np.inf
    ref = []
    for r in range(2):
        nb = np.argsort(-sims[r], kind="stable")[:2]
        w = np.clip(sims[r, nb], 0, None) ** 3
        v = x[[0, 5]][r] + (w[:, None] * x[nb]).sum(0)
        ref.append(v / np.linalg.norm(v))
    assert np.allclose(got, ref, atol=1e-5)


# --------------------------------------------------------------------------- extraction


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """An original and its halftoned reprint, plus two other photographs, at 400 px."""
    folder = tmp_path_factory.mktemp("descreen")
    out = {}
    for name in ("astronaut", "coffee", "chelsea"):
        im = source_photo(name).convert("L")
        im = im.resize((400, round(400 * im.height / im.width)))
        im.save(folder / f"{name}.png")
        out[name] = folder / f"{name}.png"
    ht = Image.fromarray(halftone(np.asarray(Image.open(out["astronaut"])), 45.0, 5.0))
    ht.save(folder / "astronaut_halftone.png")
    out["halftone"] = folder / "astronaut_halftone.png"
    return out


def _pre(size: int, descreen: float = 0.0) -> Preprocess:
    norm = models.normalisation_for("efficientnet_lite0")
    return Preprocess(size, "letterbox", True, descreen, tuple(norm["mean"]), tuple(norm["std"]))


def test_descreening_moves_a_halftoned_copy_closer_to_its_original(lite0, photos):
    pair = [photos["astronaut"], photos["halftone"]]
    cos = {}
    for ds in (0.0, 8.0):
        v = features.extract(lite0, pair, _pre(224, ds), progress=False)
        cos[ds] = float(v[0] @ v[1])
    assert cos[8.0] > cos[0.0] + 0.05


def test_multiscale_is_the_normalised_sum_of_scales(lite0, photos):
    paths = [photos["astronaut"], photos["coffee"]]
    pre = _pre(96)
    single = D.extract_multiscale(lite0, paths, pre, (1.0,), progress=False)
    assert np.allclose(single, features.extract(lite0, paths, pre, progress=False), atol=1e-5)
    both = D.extract_multiscale(lite0, paths, pre, (1.0, 0.5), progress=False)
    small = features.extract(lite0, paths, _pre(48), progress=False)
    want = single + small
    assert np.allclose(both, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
    assert D.scaled_sizes(224, (1.0, 0.707, 0.1)) == [224, 158, 32]
    with pytest.raises(ValueError, match="scales"):
        D.scaled_sizes(224, ())


def test_multiscale_decodes_and_finds_the_photograph_once_per_image(
    lite0, photos, tmp_path, monkeypatch
):
    """Three scales: each image decoded and its photograph looked for once (not per scale),
    the vectors those of each scale extracted alone, and each scale's cache the one a
    single-scale extraction writes and reads."""
    from cbir_utils.sources import photo

    paths = [photos["astronaut"], photos["coffee"], photos["halftone"]]
    pre = replace(_pre(96, 3.0), find_photo=True)
    decodes, finds = [], []
    real_load, real_box = data.load_image, photo.photo_box
    monkeypatch.setattr(data, "load_image", lambda p, *a, **k: decodes.append(p) or real_load(p))
    monkeypatch.setattr(photo, "photo_box", lambda im, *a: finds.append(1) or real_box(im, *a))
    meta = models.model_meta("efficientnet_lite0", "imagenet", "avg", 96)
    scales = (0.75, 1.0, 1.25)
    opts = dict(num_workers=0, progress=False)
    got = D.extract_multiscale(lite0, paths, pre, scales, tmp_path, meta, **opts)
    assert len(decodes) == len(finds) == len(paths)
    alone = [
        features.extract(lite0, paths, replace(pre, image_size=s), **opts) for s in (72, 96, 120)
    ]
    want = sum(alone)
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)
    for size, v in zip((72, 96, 120), alone):  # each scale's own cache, as one scale alone uses
        st = features.ExtractStats()
        cached = features.extract_cached(
            lite0, paths, replace(pre, image_size=size), tmp_path, {**meta, "image_size": size},
            stats=st, **opts,
        )  # fmt: skip
        assert st.computed == 0 and np.allclose(cached, v, atol=1e-6)
    decodes.clear()
    again = D.extract_multiscale(lite0, paths, pre, scales, tmp_path, meta, **opts)
    assert decodes == [] and np.array_equal(again, got)  # all cached: nothing decoded


def test_mirror_invariance_with_gem(photos):
    model = models.build_model("efficientnet_lite0", "imagenet", pooling="gem").eval()
    im = Image.open(photos["coffee"])
    folder = photos["coffee"].parent
    im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "coffee_mirror.png")
    paths = [photos["coffee"], folder / "coffee_mirror.png"]
    v = features.extract(model, paths, _pre(96), mirror=True, progress=False)
    assert float(v[0] @ v[1]) > 0.9999
    plain = features.extract(model, paths, _pre(96), mirror=False, progress=False)
    assert float(plain[0] @ plain[1]) < float(v[0] @ v[1])
    ms = D.extract_multiscale(model, paths, _pre(64), (1.0, 0.75), mirror=True, progress=False)
    assert float(ms[0] @ ms[1]) > 0.9999


def test_gem_is_between_average_and_max_pooling():
    x = torch.rand(2, 5, 4, 4) + 0.01
    avg, mx = x.mean(dim=(-2, -1)), x.amax(dim=(-2, -1))
    g = models.gem(x, p=3.0)
    assert (g >= avg - 1e-6).all() and (g <= mx + 1e-6).all()
    assert torch.allclose(models.gem(x, p=60.0), mx, rtol=0.1)
