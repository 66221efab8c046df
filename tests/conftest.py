"""Shared fixtures: a tiny near-duplicate collection made from photos shipped in packages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

SOURCES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "china", "flower")


def source_photo(name: str) -> Image.Image:
    """A real photograph from scikit-image or scikit-learn, as RGB."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg")).convert("RGB")
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def reprint(im: Image.Image, variant: int) -> Image.Image:
    """A cheap press-like reprint: gray, crop, blur, mirror or tone change."""
    w, h = im.size
    im = im.resize((240, round(240 * h / w)))
    if variant == 0:
        return ImageOps.grayscale(im)
    if variant == 1:
        w, h = im.size
        return im.crop((int(0.08 * w), int(0.1 * h), int(0.95 * w), w)).filter(
            ImageFilter.GaussianBlur(1)
        )
    return ImageEnhance.Contrast(ImageOps.mirror(ImageOps.grayscale(im))).enhance(0.6)


@pytest.fixture(scope="session")
def tiny_collection(tmp_path_factory) -> Path:
    """7 scenes x 3 printings (the last scene has 2), one folder per scene."""
    root = tmp_path_factory.mktemp("tiny") / "collection"
    for s, name in enumerate(SOURCES):
        photo = source_photo(name)
        folder = root / f"scene_{name}"
        folder.mkdir(parents=True)
        for v in range(2 if s == len(SOURCES) - 1 else 3):
            reprint(photo, v).save(folder / f"{name}_{v}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def lite0():
    """EfficientNet-Lite0 with its offline ImageNet weights."""
    from cbir_utils.engine import models

    return models.build_model("efficientnet_lite0", "imagenet").eval()


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
