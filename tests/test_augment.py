"""The press-reprint training augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import source_photo
from PIL import Image, ImageOps

from cbir_utils.sources import augment


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return source_photo("coffee").resize((320, 213))


def test_views_are_reproducible_and_vary(photo):
    def views(seed):
        rng = np.random.default_rng(seed)
        return [augment.press_augment(photo, rng) for _ in range(4)]

    a, b = views(3), views(3)
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]
    assert all(v.mode == "RGB" for v in a)
    assert len({np.asarray(v).tobytes() for v in a}) == 4


def test_global_numpy_seed_drives_the_default_generator(photo):
    aug = augment.PressAugment()
    np.random.seed(11)
    first = np.asarray(aug(photo))
    np.random.seed(11)
    assert np.array_equal(first, np.asarray(aug(photo)))


def test_probabilities_zero_and_one(photo):
    untouched = augment.PressAugment(p=0.0, mirror_p=0.0)(photo, np.random.default_rng(0))
    assert np.array_equal(np.asarray(untouched), np.asarray(photo))
    mirrored = augment.PressAugment(p=0.0, mirror_p=1.0)(photo, np.random.default_rng(0))
    assert np.array_equal(np.asarray(mirrored), np.asarray(ImageOps.mirror(photo)))
    with pytest.raises(ValueError, match="probability"):
        augment.PressAugment(p=1.5)


def test_reprint_halftones_and_keeps_the_picture(photo):
    aug = augment.PressAugment(
        p=1.0,
        mirror_p=0.0,
        overrides={"halftone": {"pitch": 4.0}, "crop": False, "frame": False, "rotate": False},
    )
    out = aug(photo, np.random.default_rng(1))
    gray_in = np.asarray(photo.convert("L").resize(out.size), dtype=np.float64)
    gray_out = np.asarray(out.convert("L"), dtype=np.float64)
    # a halftone screen adds strong high frequencies...
    lap = lambda g: np.abs(np.diff(g, 2, axis=1)).mean()  # noqa: E731
    assert lap(gray_out) > 2 * lap(gray_in)
    # ...but the picture is the same: correlated once both are blurred
    from scipy import ndimage

    a, b = (ndimage.gaussian_filter(g, 4) for g in (gray_in, gray_out))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8


def test_long_side_shrinks_large_inputs():
    big = source_photo("astronaut").resize((1200, 1200))
    out = augment.PressAugment(p=0.0, mirror_p=0.0, long_side=300)(big, np.random.default_rng(0))
    assert max(out.size) == 300


def test_registered_for_training():
    from cbir_utils.learning import training

    assert "press" in training.AUGMENTATIONS
    assert isinstance(training.AUGMENTATIONS["press"], augment.PressAugment)
