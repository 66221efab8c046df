"""Archive-scan degradations (the hard collection's printer): each one applied to a real
photo changes it, is the same for the same seed, and leaves the global random state alone."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from cbir_utils import degrade
from tests.conftest import source_photo


@pytest.fixture(scope="module")
def small() -> Image.Image:
    return source_photo("camera").convert("L").resize((160, 160))


@pytest.mark.parametrize("name", list(degrade.DEGRADATIONS))
def test_each_degradation_changes_the_image_and_is_deterministic(small, name):
    state = (random.getstate(), np.random.get_state()[1].copy())
    a = degrade.apply(small, name, np.random.default_rng(3))
    b = degrade.apply(small, name, np.random.default_rng(3))
    assert a.mode == "L" and a.size == small.size
    assert np.array_equal(np.asarray(a), np.asarray(b))  # same seed, same printing
    diffs = [
        np.abs(np.asarray(x, dtype=float) - np.asarray(small, dtype=float)).mean()
        for x in [a] + [degrade.apply(small, name, np.random.default_rng(s)) for s in (4, 5)]
    ]
    assert max(diffs) > 0.5, f"{name} left the image (nearly) unchanged: {diffs}"
    assert len({round(d, 6) for d in diffs}) > 1  # other seeds, other printings
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1])


def test_degrade_draws_one_or_two_effects_and_jpeg(small):
    seen = set()
    for seed in range(12):
        im, effects = degrade.degrade(small, np.random.default_rng(seed))
        body = [e for e in effects if e != "jpeg"]
        assert 1 <= len(body) <= degrade.MAX_EFFECTS and im.mode == "L"
        assert body == [n for n in degrade.DEGRADATIONS if n in body]  # table order
        seen.update(effects)
    assert len(seen) >= 8  # the draws cover most of the table
    with pytest.raises(KeyError, match="unknown degradation"):
        degrade.apply(small, "smudge", np.random.default_rng(0))


def test_page_context_keeps_the_photo_at_its_box_among_text(small):
    for seed in range(6):
        page, info = degrade.page_context(small, np.random.default_rng(seed))
        x0, t, r, b = info["box"]
        assert (r - x0, b - t) == small.size and info["layout"] in ("side", "below")
        assert np.array_equal(np.asarray(page)[t:b, x0:r], np.asarray(small))  # pasted as is
        rest = np.asarray(page).copy()
        rest[t:b, x0:r] = 255
        assert (rest < 128).mean() > 0.01  # ink outside the photo: text, caption
        again, _ = degrade.page_context(small, np.random.default_rng(seed))
        assert np.array_equal(np.asarray(page), np.asarray(again))


def test_hard_printing_is_deterministic_and_records_what_it_did():
    from cbir_utils import demo

    base = source_photo("coffee").resize((200, 133))
    kinds = set()
    for seed in range(8):
        a, rec = demo.hard_printing(base, np.random.default_rng(seed))
        b, _ = demo.hard_printing(base, np.random.default_rng(seed))
        assert np.array_equal(np.asarray(a), np.asarray(b)) and a.mode == "L"
        assert rec["output_size"] == list(a.size) and rec["degradations"]
        if rec["halftone"]:
            assert "dither" not in rec["degradations"]  # one screening per printing
        if rec["page_context"]:
            x0, t, r, b_ = rec["page_context"]["box"]
            assert 0 <= x0 < r <= a.width and 0 <= t < b_ <= a.height
        kinds.add(bool(rec["page_context"]))
    assert kinds == {True, False}  # some printings kept their page, some did not
