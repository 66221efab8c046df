"""Local-feature matching, geometric verification and re-ranking on real photographs."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageOps

from cbir_utils.engine import verify
from cbir_utils.sources.demo import halftone

matplotlib.use("Agg")

from conftest import source_photo  # noqa: E402


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return source_photo("astronaut").convert("L").resize((400, 400))


def _halftoned(im: Image.Image, pitch: float = 3.5) -> Image.Image:
    return Image.fromarray(halftone(np.asarray(im.convert("L")), 45.0, pitch))


def test_crop_matches_with_the_right_homography(photo):
    box = (60, 40, 340, 300)  # a crop, enlarged 1.25x and halftoned: a reprint
    crop = photo.crop(box)
    crop = _halftoned(crop.resize((350, 325)))
    m = verify.match_pair(photo, crop)
    assert m.n_inliers >= 30 and m.verified()
    assert not m.mirrored
    # a point of the original maps to (point - crop offset) * 1.25 in the reprint
    pts = np.array([[100.0, 100.0, 1.0], [300.0, 250.0, 1.0]])
    mapped = pts @ m.homography.T
    mapped = mapped[:, :2] / mapped[:, 2:]
    expected = (pts[:, :2] - [box[0], box[1]]) * 1.25
    assert np.abs(mapped - expected).max() < 6.0
    xa, xb = m.inlier_pairs
    assert xa.shape == xb.shape == (m.n_inliers, 2)


def test_mirrored_printing_is_matched_as_a_mirror(photo):
    mirrored = ImageOps.mirror(photo)
    plain = verify.match_pair(photo, mirrored, mirror=False)
    found = verify.match_pair(photo, mirrored, mirror=True)
    assert found.mirrored and found.n_inliers >= 50
    assert found.n_inliers > 3 * max(plain.n_inliers, 1)
    # the homography is a reflection: x -> w - x
    p = np.array([120.0, 200.0, 1.0]) @ found.homography.T
    assert abs(p[0] / p[2] - (400 - 120)) < 4 and abs(p[1] / p[2] - 200) < 4


def test_different_photographs_are_not_verified(photo):
    other = source_photo("coffee").convert("L").resize((400, 300))
    m = verify.match_pair(photo, other)
    assert not m.verified()
    assert m.n_inliers < verify.MIN_INLIERS


def test_paths_and_orb_work(tiny_collection):
    a, b = sorted((tiny_collection / "scene_camera").glob("*.jpg"))[:2]
    m = verify.match_pair(a, b, method="orb")
    assert m.method == "orb" and m.verified()
    with pytest.raises(ValueError, match="Unknown method"):
        verify.match_pair(a, b, method="surf")


def test_draw_matches_titles_the_inlier_count(photo, tmp_path):
    m = verify.match_pair(photo, _halftoned(photo.crop((0, 0, 300, 320))))
    fig = verify.draw_matches(m, path=tmp_path / "m.png", title="astronaut")
    title = fig.axes[0].get_title()
    assert f"{m.n_inliers} inliers" in title and "astronaut" in title
    assert (tmp_path / "m.png").stat().st_size > 1000
    # one line per inlier (up to max_lines) plus the two scatter layers
    assert len(fig.axes[0].lines) == min(150, m.n_inliers)


def test_planted_crop_rises_to_rank_1(tiny_collection, tmp_path):
    query = tmp_path / "chelsea.jpg"
    source_photo("chelsea").convert("L").resize((480, 320)).save(query)
    planted = tmp_path / "planted_crop.jpg"
    im = Image.open(query)
    w, h = im.size
    _halftoned(im.crop((int(0.2 * w), int(0.15 * h), int(0.9 * w), int(0.85 * h)))).save(planted)
    others = sorted(p for p in tiny_collection.rglob("*.jpg") if "chelsea" not in p.name)
    candidates = [*others[:8], planted]
    scores = np.linspace(0.9, 0.6, len(candidates))  # the crop ranked last by the descriptor
    res = verify.rerank(query, candidates, scores, top_n=len(candidates), weight=1.0)
    assert res.order[0] == len(candidates) - 1
    assert res.inliers[-1] >= verify.MIN_INLIERS
    # the unverified look-alikes keep their score and their order
    unverified = res.inliers < verify.MIN_INLIERS
    assert unverified[:-1].all()
    assert np.allclose(res.scores[unverified], scores[unverified])
    assert list(res.order[1:]) == list(range(len(candidates) - 1))
    # beyond top_n nothing is matched, and the crop stays last
    res2 = verify.rerank(query, candidates, scores, top_n=3)
    assert (res2.inliers[3:] == -1).all() and res2.order[-1] == len(candidates) - 1


def test_remembered_verifications_are_reused(tiny_collection):
    paths = sorted(tiny_collection.rglob("*.jpg"))[:6]
    scores = np.random.default_rng(0).uniform(0, 1, len(paths) - 1)
    store = verify.LocalFeatureStore(remember_matches=True)
    first = verify.rerank(str(paths[0]), paths[1:], scores, top_n=4, store=store)
    assert len(store.matches) == 4 and (first.inliers >= 0).sum() == 4
    again = verify.rerank(str(paths[0]), paths[1:], scores, top_n=4, store=store)
    assert np.array_equal(first.inliers, again.inliers)


def test_graph_from_lists():
    idx = np.array([[1, 2], [0, 2], [0, 1]])
    inl = np.array([[40, 3], [-1, -1], [5, 30]])
    g = verify.graph_from_lists(idx, inl, 3, edge_inliers=20)
    assert sorted(g.neighbours(0)) == [1] and sorted(g.neighbours(1)) == [0, 2]
    assert sorted(g.neighbours(2)) == [1]  # edges join both ways
    assert g.inliers[0, 2] == 3 and g.inliers[2, 1] == 30  # every verification is kept
    assert list(g.hops([0], exclude=None)) == [1] and list(g.hops([1], exclude=1)) == []
    assert list(g.hops([2])) == [1]


def test_inlier_bonus_is_zero_below_the_minimum_and_saturates():
    b = verify.inlier_bonus(np.array([0, 9, 10, 30, 50, 500]), min_inliers=10, saturation=50)
    assert b[0] == b[1] == 0.0 and 0 < b[2] < b[3] < b[4] == 1.0 == b[5]
