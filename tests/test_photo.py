"""Finding the photograph in a scan that kept page text: the box is found on real photos set
in a page, a photograph alone is left whole, and the preprocessing uses it when asked."""

from __future__ import annotations

import numpy as np
import pytest

from cbir_utils import data, degrade, photo
from tests.conftest import SOURCES, source_photo


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


@pytest.mark.parametrize("name", SOURCES)
def test_the_photograph_is_found_beside_or_above_text(name):
    im = source_photo(name).convert("L")
    im.thumbnail((400, 400))
    for seed in (0, 1):
        page, info = degrade.page_context(im, np.random.default_rng(seed))
        box = photo.photo_box(page)
        assert box is not None, (name, seed, info["layout"])
        assert _iou(box, info["box"]) >= 0.7, (name, seed, box, info["box"])


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


def test_preprocessing_cuts_to_the_photograph_only_when_asked():
    im = source_photo("camera").convert("L").resize((300, 300))
    page, info = degrade.page_context(im, np.random.default_rng(0))
    plain = data.Preprocess(image_size=64, pixels=True)
    cut = data.Preprocess(image_size=64, pixels=True, find_photo=True)
    assert plain.prepare(page).size != cut.prepare(page).size  # text columns left out
    box = photo.photo_box(page)
    assert cut.prepare(page).size == plain.prepare(page.crop(box)).size
    assert "find_photo" not in plain.to_dict() and cut.to_dict()["find_photo"] is True
    meta = {"image_size": 64, "find_photo": True, "backbone": "sscd"}
    assert data.preprocess_from_meta(meta).find_photo
