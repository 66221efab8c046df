"""Finding the photograph in a scan that kept page text: the box is found on real photos set
in a page, a photograph alone is left whole, and the preprocessing uses it when asked."""

from __future__ import annotations

import numpy as np
import pytest

from cbir_utils.engine import models
from cbir_utils.sources import data, degrade, photo
from tests.conftest import SOURCES, source_photo


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


@pytest.mark.parametrize("name", SOURCES)
def test_the_photograph_is_found_beside_or_above_text(name):
    """Where the page text left out is at least MIN_CUT of the scan, the photograph is found;
    narrower text is left in place (cutting it risks cutting photographs alone)."""
    im = source_photo(name).convert("L")
    im.thumbnail((400, 400))
    found = 0
    for seed in range(6):
        page, info = degrade.page_context(im, np.random.default_rng(seed))
        box = photo.photo_box(page)
        b = info["box"]
        left_out = 1 - (b[2] - b[0]) * (b[3] - b[1]) / (page.width * page.height)
        if left_out >= photo.MIN_CUT + 0.03:
            assert box is not None, (name, seed, info["layout"], left_out)
            assert _iou(box, b) >= 0.7, (name, seed, box, b)
            found += 1
        elif left_out < photo.MIN_CUT - 0.03:
            assert box is None, (name, seed, info["layout"], left_out)
    assert found, name


@pytest.mark.parametrize("name", SOURCES)
def test_a_photograph_alone_is_left_whole(name):
    im = source_photo(name)
    im.thumbnail((400, 400))
    assert photo.photo_box(im) is None
    assert photo.crop_photo(im) is im


def test_best_rectangle_is_the_largest_sum():
    score = -np.ones((6, 7))
    score[1:4, 2:6] = 1.0
    score[5, 0] = 2.0  # a lone high block outside does not pay for the gap to it
    assert photo._best_rectangle(score) == (1, 2, 4, 6)


def test_best_rectangle_is_the_brute_force_one():
    rng = np.random.default_rng(3)
    for _ in range(40):
        score = rng.standard_normal(tuple(rng.integers(1, 7, 2)))
        r, c = score.shape
        best = max(score[t:b, left:right].sum() for t in range(r) for b in range(t + 1, r + 1)
                   for left in range(c) for right in range(left + 1, c + 1))  # fmt: skip
        t, left, b, right = photo._best_rectangle(score)
        assert score[t:b, left:right].sum() == pytest.approx(best)


def test_preprocessing_cuts_to_the_photograph_only_when_asked(monkeypatch):
    im = source_photo("camera").convert("L").resize((300, 300))
    page, info = degrade.page_context(im, np.random.default_rng(4))  # text: 35 % of the scan
    plain = data.Preprocess(image_size=64, pixels=True)
    cut = data.Preprocess(image_size=64, pixels=True, find_photo=True)
    assert plain.prepare(page).size != cut.prepare(page).size  # text columns left out
    box = photo.photo_box(page)
    assert cut.prepare(page).size == plain.prepare(page.crop(box)).size
    assert "find_photo" not in plain.to_dict() and cut.to_dict()["find_photo"] == photo.finder_id()
    old = photo.finder_id()  # the cache key follows the finder's settings
    monkeypatch.setattr(photo, "MIN_CUT", photo.MIN_CUT + 0.1)
    assert cut.to_dict()["find_photo"] != old
    meta = {"image_size": 64, "find_photo": True, "backbone": "sscd"}
    assert models.preprocess_from_meta(meta).find_photo


def test_a_thin_strip_is_never_taken_for_the_photograph(monkeypatch):
    """A "photograph" found covering under MIN_KEEP of the scan is refused: in scans that
    keep page text the photograph is most of the scan, so such a strip means washed-out sky
    or sand taken for paper (as on some of the hard collection's monuments)."""
    from PIL import Image

    scan = Image.new("L", (320, 256), 200)  # 40 x 32 blocks of 8 px at SIDE 256 (x 1.25)
    p = np.full((32, 40), 0.05)  # the blocks' probabilities of being photograph
    p[:6, :] = 0.95  # a strip: 0.19 of the scan
    monkeypatch.setattr(photo, "photo_probability", lambda im, w=None: p)
    assert photo.photo_box(scan) is None
    old = photo.finder_id()
    monkeypatch.setattr(photo, "MIN_KEEP", 0.1)
    assert photo.photo_box(scan) == (0, 0, 320, 60)
    assert photo.finder_id() != old  # the descriptor cache follows the rule
    p[:20, :] = 0.95  # a photograph of 0.62 of the scan, text under it: cut at any MIN_KEEP
    monkeypatch.setattr(photo, "MIN_KEEP", 0.25)
    assert photo.photo_box(scan) == (0, 0, 320, 200)
