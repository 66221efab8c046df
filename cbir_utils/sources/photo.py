"""Finding the photograph in a scan that kept part of its page (text columns, a caption band).

A scan cropped by hand often keeps a strip of text beside or under the photograph; described
whole, it matches other printings' text as much as the photograph (``shared/DOMAIN.md``).
:func:`photo_box` tells printed text and paper from a photograph, block by block, and returns
the rectangle that holds the photograph, or ``None`` when the whole scan is the photograph.

Each block of 8 x 8 pixels of the scan at a 256-pixel long side gets a few texture features
(tone, contrast, share of paper and ink, the row-by-row alternation of text lines), averaged
with its neighbours; a logistic model (:data:`WEIGHTS`, fitted by
``benchmarks/photo_finder.py`` on simulated pages of the demo's photographs, none of the
check or hard collections') gives each block a probability of being photograph, and the
rectangle of blocks with the largest sum of ``probability - 0.5`` is the photograph.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image
from scipy import ndimage

SIDE = 256
"""Long side (px) the scan is analysed at."""
BLOCK = 8
"""Block side (px) at that size."""
FEATURES = (
    "mean",
    "std",
    "paper",
    "ink",
    "grad_y",
    "grad_x",
    "rows",
    "cols",
    "ctx_paper",
    "ctx_ink",
    "ctx_rows",
)
# Logistic model over FEATURES (and a bias, last): benchmarks/photo_finder.py --fit.
WEIGHTS = np.array(
    [-4.6350, -8.0977, -0.0571, -1.4549, 9.9725, -3.8073, 0.0385, -0.4808, -1.6674, 1.1073]
    + [-9.7273, 7.8599]
)
MIN_CUT = 0.3
"""Crop only when the text and paper left out are at least this share of the scan's area...

Chosen on the demo collection, whose printings keep no page text: the smallest of 0.12,
0.2 and 0.3 that cuts none of its images (0.12 cut 4.1 % of them, 0.2 2.2 %). Through the
pipeline it leaves the demo's and the check collection's figures unchanged and keeps the
hard collection's gains (``benchmarks/robustness.py``); the finder then leaves narrow text
columns in place: on simulated pages (``benchmarks/photo_finder.py``) it finds 0.56 of the
page scans' photographs at IoU >= 0.5 (0.82 at 0.12) and cuts no photograph without page
context."""
MAX_OUTSIDE = 0.2
"""...and their blocks' mean probability of being photograph is below this (at 0.3 the
finder cut 0.19 of the simulated photographs without page context)."""
MIN_KEEP = 0.25
"""...and the photograph kept is at least this share of the scan: a photograph with the text
kept beside or under it covers at least half of such a scan (in the hard collection's page
scans 0.51 to 0.75), while a thin strip "found" in a photograph means washed-out sky or sand
taken for paper."""


def finder_id() -> str:
    """Identifies the finder's settings (weights, :data:`MIN_CUT`, :data:`MAX_OUTSIDE`,
    :data:`MIN_KEEP`): part of the descriptor cache key of images described with
    ``find_photo``, so that a changed finder never reuses descriptors of images it would cut
    otherwise."""
    blob = np.asarray([*np.ravel(WEIGHTS), MIN_CUT, MAX_OUTSIDE, MIN_KEEP], dtype=np.float64)
    return hashlib.sha1(blob.tobytes()).hexdigest()[:12]


def block_features(img: Image.Image, side: int = SIDE) -> np.ndarray:
    """Features ``(rows, cols, len(FEATURES))`` of the scan's blocks, at long side ``side``."""
    g = img.convert("L")
    s = side / max(g.size)
    g = g.resize((max(BLOCK, round(g.width * s)), max(BLOCK, round(g.height * s))), Image.BILINEAR)
    a = np.asarray(g, dtype=np.float32) / 255.0
    lo, hi = np.percentile(a, 2), np.percentile(a, 98)
    a = np.clip((a - lo) / max(hi - lo, 1e-3), 0.0, 1.0)
    h, w = (a.shape[0] // BLOCK) * BLOCK, (a.shape[1] // BLOCK) * BLOCK
    a = a[:h, :w]
    b = a.reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).transpose(0, 2, 1, 3)
    gy = np.abs(np.diff(a, axis=0, append=a[-1:]))
    gx = np.abs(np.diff(a, axis=1, append=a[:, -1:]))

    def blocks(x: np.ndarray) -> np.ndarray:
        return x.reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).mean(axis=(1, 3))

    row_means = b.mean(axis=3)  # (R, C, BLOCK): the mean of each pixel row of a block
    col_means = b.mean(axis=2)
    var = b.var(axis=(2, 3)) + 1e-4
    f = [
        b.mean(axis=(2, 3)),
        np.sqrt(var),
        (b > 0.8).mean(axis=(2, 3)),
        (b < 0.35).mean(axis=(2, 3)),
        blocks(gy),
        blocks(gx),
        row_means.var(axis=2) / var,
        col_means.var(axis=2) / var,
    ]
    for i in (2, 3, 6):  # the neighbourhood: text comes in columns, photographs in areas
        f.append(ndimage.uniform_filter(f[i], size=5, mode="nearest"))
    return np.stack(f, axis=-1)


def photo_probability(img: Image.Image, weights: np.ndarray | None = None) -> np.ndarray:
    """Probability that each block is photograph ``(rows, cols)``."""
    w = WEIGHTS if weights is None else np.asarray(weights)
    x = block_features(img)
    return 1.0 / (1.0 + np.exp(-(x @ w[:-1] + w[-1])))


def _best_rectangle(score: np.ndarray) -> tuple[int, int, int, int]:
    """Block rectangle ``(top, left, bottom, right)`` (exclusive ends) of largest sum.

    For each top row, the column sums of every band below it at once, and for each band
    the best run of columns (Kadane as prefix sums: a prefix minus the smallest before it).
    Ties go to the first found (top, then bottom, then right end, then the latest left).
    """
    rows, cols = score.shape
    best, box = -np.inf, (0, 0, rows, cols)
    for top in range(rows):
        bands = np.cumsum(score[top:], axis=0)  # (bottoms, cols): band sums per column
        prefix = np.concatenate([np.zeros((len(bands), 1)), np.cumsum(bands, axis=1)], axis=1)
        lowest = np.minimum.accumulate(prefix[:, :-1], axis=1)
        gain = prefix[:, 1:] - lowest  # best run ending at each column
        b, c = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if gain[b, c] > best:
            start = int(np.flatnonzero(prefix[b, : c + 1] == lowest[b, c])[-1])
            best, box = float(gain[b, c]), (top, start, top + b + 1, int(c) + 1)
    return box


def photo_box(
    img: Image.Image, weights: np.ndarray | None = None
) -> tuple[int, int, int, int] | None:
    """Pixel box ``(left, top, right, bottom)`` of the photograph in ``img``, or ``None``.

    ``None`` when nothing but the photograph was found: the rectangle covers all but less
    than :data:`MIN_CUT` of the scan, or what it leaves out may be photograph too (mean
    probability :data:`MAX_OUTSIDE` or more).
    """
    p = photo_probability(img, weights)
    t, left, b, r = _best_rectangle(p - 0.5)
    inside = np.zeros(p.shape, dtype=bool)
    inside[t:b, left:r] = True
    kept = inside.mean()
    if kept > 1.0 - MIN_CUT or kept < MIN_KEEP or p[~inside].mean() >= MAX_OUTSIDE:
        return None
    k = max(img.size) / SIDE * BLOCK  # block -> pixel of the scan
    return (
        int(round(left * k)),
        int(round(t * k)),
        min(img.width, int(round(r * k))),
        min(img.height, int(round(b * k))),
    )


def crop_photo(img: Image.Image) -> Image.Image:
    """``img`` cut to :func:`photo_box` (unchanged when the whole scan is the photograph)."""
    box = photo_box(img)
    return img if box is None else img.crop(box)


def rotated(
    x: np.ndarray, y: np.ndarray, angle: float, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(x, y)`` of a page of ``size`` once it is rotated by ``angle`` degrees about
    its centre, counter-clockwise as PIL rotates."""
    cx, cy = size[0] / 2, size[1] / 2
    px, py, t = np.asarray(x) - cx, np.asarray(y) - cy, np.deg2rad(angle)
    return px * np.cos(t) + py * np.sin(t) + cx, -px * np.sin(t) + py * np.cos(t) + cy


def rotated_bounds(
    box: tuple[int, int, int, int], angle: float, size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Bounds ``(x0, y0, x1, y1)`` of ``box`` once its page of ``size`` is rotated by ``angle``
    degrees about its centre, counter-clockwise as PIL rotates (:func:`rotated`)."""
    x, y, w, h = box
    rx, ry = rotated(np.array([x, x + w, x, x + w]), np.array([y, y, y + h, y + h]), angle, size)
    return float(rx.min()), float(ry.min()), float(rx.max()), float(ry.max())
