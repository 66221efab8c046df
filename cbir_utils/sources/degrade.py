"""Archive-scan degradations beyond the press simulation: how the hard collection is printed.

Real scans of 1890-1918 periodicals carry more than a halftone screen (``shared/DOMAIN.md``):
error-diffusion and ordered dithers, ink bleed and mottling, streaks of dirty rollers and
drums, photocopy noise, folds, the reverse page showing through, uneven light, heavy fading,
paper texture and JPEG. Each is drawn from Augraphy (MIT, offline; ``augraphy`` on PyPI), the
document-degradation library. What Augraphy has no model of is written here by hand:
:func:`page_context`, a scan that kept part of its page (text columns beside or under the
photograph, a caption band).

Every draw comes from a ``numpy.random.Generator``: :func:`degrade` seeds Augraphy's global
random state from it and restores that state afterwards, so a printing is the same for the
same generator state. Augraphy's numba functions run as Python (:func:`_augraphy`).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cbir_utils.errors import ToolError

VERSION = 2
"""Bump when a degradation's output changes (hard collection builds, cached training views)."""

# Relative weight of each effect when degrade() draws a printing's effects (applied in this
# order; JPEG, the digitisation's, is drawn apart, with its weight as a probability).
DEGRADATIONS: dict[str, float] = {
    "fading": 0.35,
    "dither": 0.3,
    "ink_bleed": 0.35,
    "ink_mottling": 0.3,
    "rollers": 0.2,
    "drum": 0.25,
    "photocopy": 0.25,
    "fold": 0.25,
    "bleed_through": 0.3,
    "lighting": 0.35,
    "paper": 0.5,
    "noise": 0.3,
    "jpeg": 0.8,
}
MAX_EFFECTS = 2
"""At most this many effects besides JPEG on one printing (1 or 2, uniformly)."""
PAGE_CONTEXT_SHARE = 0.3
"""Share of the hard collection's printings scanned with part of their page (text, caption)."""


def _augmentation(name: str, rng: np.random.Generator) -> Callable[[np.ndarray], Any]:
    """The Augraphy augmentation of effect ``name``, its parameters drawn from ``rng``."""
    A = _augraphy()

    if name == "fading":  # heavy fading: low contrast, lifted blacks
        return A.Brightness(brightness_range=(1.15, 1.45), min_brightness=1, numba_jit=0, p=1)
    if name == "dither":
        kind = "floyd-steinberg" if rng.random() < 0.5 else "ordered"
        return A.Dithering(dither=kind, order=(3, 6), numba_jit=0, p=1)
    if name == "ink_bleed":
        return A.InkBleed(intensity_range=(0.5, 0.9), kernel_size=(5, 5), severity=(0.3, 0.6), p=1)
    if name == "ink_mottling":
        return A.InkMottling(ink_mottling_alpha_range=(0.3, 0.6), p=1)
    if name == "rollers":
        return A.DirtyRollers(line_width_range=(4, 24), scanline_type=0, numba_jit=0, p=1)
    if name == "drum":
        return A.DirtyDrum(
            line_width_range=(2, 6),
            line_concentration=float(rng.uniform(0.2, 0.4)),
            noise_intensity=float(rng.uniform(0.6, 0.95)),
            p=1,
        )
    if name == "photocopy":
        kind = int(rng.choice([1, 2, 3]))  # not 4: as Python, its point count is a float
        return A.BadPhotoCopy(
            noise_type=kind,
            noise_iteration=(1, 2),
            noise_value=(32, 96),
            noise_sparsity=(0.3, 0.7),
            noise_concentration=(0.3, 0.6),
            numba_jit=0,
            p=1,
        )
    if name == "fold":
        return A.Folding(
            fold_count=int(rng.integers(1, 4)), fold_noise=0.0, backdrop_color=(255, 255, 255), p=1
        )
    if name == "bleed_through":
        return A.BleedThrough(intensity_range=(0.1, 0.3), alpha=0.25, offsets=(20, 20), p=1)
    if name == "lighting":
        return A.LightingGradient(max_brightness=255, min_brightness=40, numba_jit=0, p=1)
    if name == "paper":
        return A.NoiseTexturize(sigma_range=(4, 10), turbulence_range=(2, 5), p=1)
    if name == "noise":
        return A.SubtleNoise(subtle_range=20, p=1)
    if name == "jpeg":
        return A.Jpeg(quality_range=(30, 85), p=1)
    raise KeyError(f"unknown degradation {name!r}; known: {', '.join(DEGRADATIONS)}")


def _augraphy():
    """Augraphy, its numba functions run as Python.

    Compiled, several of them (fading, dithers, rollers, photocopy) fail to type with
    NumPy 2.4 on a machine without numba's cache, and their random draws would come from
    numba's own generator; as Python they run (a second at most per image) and draw from the
    generators :func:`_seeded` seeds. Augraphy must not have been imported before.
    """

    if "augraphy" not in sys.modules:
        import numba

        numba.config.DISABLE_JIT = True  # read by numba's decorators as Augraphy loads
    try:
        import augraphy
    except ImportError as e:  # installed by `make setup`, without its opencv-python
        raise ToolError(
            "The archive degradations need Augraphy: run `make setup`, or "
            "`pip install --no-deps augraphy==8.2.6` (it then uses opencv-python-headless)."
        ) from e
    return augraphy


@contextmanager
def _seeded(rng: np.random.Generator):
    """Seed Python's and NumPy's global generators (Augraphy draws from them), then restore."""
    py_state, np_state = random.getstate(), np.random.get_state()
    seed = int(rng.integers(0, 2**31 - 1))
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def apply(img: Image.Image, name: str, rng: np.random.Generator) -> Image.Image:
    """One degradation ``name`` applied to ``img`` (returned gray, mode ``"L"``)."""
    arr = np.asarray(img.convert("RGB"))
    with _seeded(rng):
        out = _augmentation(name, rng)(arr.copy())
    if isinstance(out, tuple):  # some augmentations return (image, mask, keypoints, boxes)
        out = out[0]
    out = np.asarray(out)
    return Image.fromarray(out if out.ndim == 2 else out[..., :3].mean(-1).astype(np.uint8))


def degrade(
    img: Image.Image,
    rng: np.random.Generator,
    effects: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
) -> tuple[Image.Image, list[str]]:
    """Degrade a printing as a real archive scan does; returns the image and the effects.

    1 to :data:`MAX_EFFECTS` effects of :data:`DEGRADATIONS` drawn by weight (applied in the
    table's order), then JPEG with its probability; or exactly ``effects`` when given;
    never those of ``exclude`` (``dither`` on a halftoned printing: one screening process
    per printing). The result is gray (mode ``"L"``).
    """
    if effects is None:
        names = [n for n in DEGRADATIONS if n != "jpeg" and n not in exclude]
        w = np.array([DEGRADATIONS[n] for n in names])
        k = int(rng.integers(1, MAX_EFFECTS + 1))
        pick = set(rng.choice(len(names), size=k, replace=False, p=w / w.sum()).tolist())
        effects = tuple(n for i, n in enumerate(names) if i in pick)
        if rng.random() < DEGRADATIONS["jpeg"]:
            effects += ("jpeg",)
    im = img.convert("L")
    for name in effects:
        im = apply(im, name, rng)
    return im, list(effects)


# ---------------------------------------------------------------------------- page context

_WORDS = (
    "le la les de du des un une et en au aux sur par pour dans avec nos soldats front "
    "tranchée village armée ligne guerre ennemi bataille régiment officiers canon "
    "ville pont route photographie notre envoyé spécial hier matin ont été sous feu"
).split()


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _text_block(w: int, h: int, rng: np.random.Generator, size: int) -> Image.Image:
    """A block of justified-looking text lines (random words) on white, ``w`` x ``h``."""
    block = Image.new("L", (max(1, w), max(1, h)), 255)
    draw = ImageDraw.Draw(block)
    font = _font(size)
    y, line = 0, int(size * 1.25)
    while y + line <= h:
        words, text = rng.choice(_WORDS, size=40), ""
        for word in words:
            if draw.textlength(text + " " + word, font=font) > w:
                break
            text = f"{text} {word}" if text else str(word)
        if rng.random() > 0.08:  # a few blank lines: paragraph breaks
            draw.text((0, y), text, fill=int(rng.integers(0, 60)), font=font)
        y += line
    return block


def page_context(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """The photograph as scanned with part of its page: text columns beside or under it.

    Returns the page crop (mode ``"L"``) and a record with ``layout`` (``side`` or
    ``below``) and ``box``, the photograph's pixel box ``[l, t, r, b]`` in the crop.
    """
    photo = img.convert("L")
    w, h = photo.size
    size = max(9, round(max(w, h) * rng.uniform(0.022, 0.035)))
    gap = max(4, size // 2)
    caption_h = int(size * 1.6)
    layout = "side" if rng.random() < 0.5 else "below"
    if layout == "side":  # one or two text columns beside the photo, a caption under it
        cols = int(rng.integers(1, 3))
        col_w = round(w * rng.uniform(0.22, 0.35))
        page = Image.new("L", (w + cols * (col_w + gap), h + caption_h + gap), 255)
        left = rng.random() < 0.5
        px = cols * (col_w + gap) if left else 0
        for c in range(cols):
            x = c * (col_w + gap) if left else w + gap + c * (col_w + gap)
            page.paste(_text_block(col_w, page.height, rng, size), (x, 0))
        py = 0
    else:  # a caption band, then text columns under the photo
        text_h = round(h * rng.uniform(0.25, 0.45))
        page = Image.new("L", (w, h + caption_h + text_h + 2 * gap), 255)
        px, py = 0, 0
        n_cols = int(rng.integers(2, 4))
        col_w = (w - (n_cols - 1) * gap) // n_cols
        for c in range(n_cols):
            block = _text_block(col_w, text_h, rng, size)
            page.paste(block, (c * (col_w + gap), h + caption_h + 2 * gap))
    page.paste(photo, (px, py))
    caption = " ".join(rng.choice(_WORDS, size=8)).upper()
    ImageDraw.Draw(page).text(
        (px, py + h + gap // 2), caption, fill=20, font=_font(round(size * 1.15))
    )
    box = [int(px), int(py), int(px + w), int(py + h)]
    return page, {"layout": layout, "box": box}
