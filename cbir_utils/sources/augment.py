"""Training augmentation that imitates press reprints.

A scene's printings differ by halftone screen, crop, slight rotation, mirroring, tone, paper,
blur, ink noise, captions and JPEG re-compression. :class:`PressAugment` prints a training
image once more through :func:`cbir_utils.sources.demo.press_reprint` (the same simulation the demo
collection is built with), so fine-tuning sees the variation it must ignore.

It is registered in :data:`cbir_utils.learning.training.AUGMENTATIONS` as ``"press"``. Like every
augmentation there, it draws its randomness from ``np.random`` (seeded per image draw by the
trainer), so a run is reproducible whatever the number of worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from cbir_utils.errors import InputError
from cbir_utils.sources.demo import press_reprint


@dataclass
class PressAugment:
    """Print a PIL image once more through the press-reprint simulation.

    Attributes:
        p: Probability that an image is reprinted (else returned as is, but still
            mirrored with probability ``mirror_p``).
        mirror_p: Probability of a mirror flip, applied on top (plates printed flipped).
        long_side: The image is first shrunk to this long side (speed; the simulation then
            picks the printing size), ``None`` to keep it.
        overrides: Extra ``press_reprint`` overrides, e.g. ``{"frame": False}`` to never
            add borders and captions, ``{"crop": 0.3}`` for a fixed crop share.
    """

    p: float = 0.8
    mirror_p: float = 0.5
    long_side: int | None = 640
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("p", "mirror_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"{name} must be a probability in [0, 1], got {v!r}.")
        if self.long_side is not None and int(self.long_side) < 32:
            raise InputError(f"long_side must be at least 32 or None, got {self.long_side!r}.")

    def __call__(self, im: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        """Reprint ``im`` (RGB in, RGB out).

        Args:
            im: The decoded training image.
            rng: Random generator; default one drawn from ``np.random`` (seeded by the
                trainer per image draw).
        """
        if rng is None:
            rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        if self.long_side is not None and max(im.size) > self.long_side:
            s = self.long_side / max(im.size)
            im = im.resize(
                (max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR
            )
        if rng.random() < self.p:
            overrides = {"mirror": False, **self.overrides}  # mirroring is decided below
            im, _ = press_reprint(im, rng, **overrides)
        if rng.random() < self.mirror_p:
            im = ImageOps.mirror(im)
        return im.convert("RGB")


press_augment = PressAugment()
"""The ``"press"`` training augmentation (default parameters)."""
