"""Archive-scan degradations (the hard collection's printer): each one applied to a real
photo changes it, is the same for the same seed, and leaves the global random state alone."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from cbir_utils.sources import degrade
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
    from cbir_utils.sources import demo

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


def test_hard_pool_cuts_each_photo_into_its_bands():
    from cbir_utils.sources import demo

    keys = [f"debian:plasma-workspace-wallpapers:{n}" for n in demo.HARD_PACKAGES[
        "plasma-workspace-wallpapers"]]  # fmt: skip
    pool = demo._hard_pool(keys)
    assert len(pool) == demo.HARD_SCENES == 30 and len({s.slug for s in pool}) == 30
    grey = [s for s in pool if s.slug.startswith("grey")]
    assert [s.region for s in grey] == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]


def test_robustness_check_names_each_missed_target():
    """``robustness.py --check``: fine-tuned above pretrained held out, demo and check at the
    README's figures, classifier accuracy on check and hard, the hard collection's target."""
    import sys

    import pandas as pd

    from cbir_utils.paths import PROJECT_ROOT

    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    import robustness as R

    def table(hard_all, hard_ft_disjoint, check_acc):
        rows = []
        for coll, pre, ft in (("demo", 0.997, 1.0), ("check", 0.970, 0.981), ("hard", 0.57, None)):
            ft = hard_ft_disjoint if ft is None else ft
            for model, held, acc in ((R.PRETRAINED, pre, None), (R.FINETUNED, ft, check_acc)):
                for protocol in R.PROTOCOLS:
                    m = held if protocol == "disjoint" else (hard_all if coll == "hard" else 0.99)
                    rows.append(dict(collection=coll, model=model, protocol=protocol, mAP=m,
                                     **{"P@1": 0.99 if m > 0.9 else 0.5}, test_accuracy=acc))  # fmt: skip
        return pd.DataFrame(rows)

    assert R.check(table(0.95, 0.60, 0.9)) == []
    fails = R.check(table(0.66, 0.56, 0.7))
    assert len(fails) == 4, fails
    assert any("hard: fine-tuned held-out mAP 0.560 <= pretrained 0.570" in f for f in fails)
    assert any("check: classifier test accuracy 0.700" in f for f in fails)
    assert any("every image a query: mAP 0.660" in f for f in fails)
