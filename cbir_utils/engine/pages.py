"""Photographs found on digitised pages: each becomes an item ``<page>#xywh=x,y,w,h``.

Archives and IIIF manifests give whole pages: several photographs among columns of text,
captions, line drawings and mastheads (``shared/DOMAIN.md``). :func:`find_photos` cuts
them out before anything is described, as the Library of Congress's Newspaper Navigator did:

1. every block of 8 x 8 pixels of the page at a 1024-pixel long side gets texture features
   (:func:`features`); a small perceptron (:data:`MODEL`, fitted by ``benchmarks/pages.py
   --fit`` on pages of the demo's printings, :mod:`cbir_utils.sources.page_builder`) gives it a
   probability of photograph;
2. the page is turned upright (:func:`skew`, measured on the blocks that are not photograph)
   and its blocks classified again; a second perceptron reads each block's features with the
   first one's probabilities around it (:func:`context`: a pale wall or sky inside a photograph
   is photograph all round, faded text is text along its line);
3. blocks above :data:`THRESHOLD` form regions, cut where a row or column of them is nearly
   empty (:data:`XY_EMPTY`), then along gutters of bare paper that cross them whole (a
   photo-story printed a few pixels apart, :data:`FLAT`, :data:`GUTTER_FLAT`);
4. a region is a photograph when it fills its box (:data:`MIN_FILL`: an oval fills 0.79), is
   large and compact enough, mostly photograph blocks and clear of the scan's edges;
5. where the second perceptron's map sees one photograph and the first one's pieces of it,
   the whole replaces the pieces, unless text lies between them (:func:`_whole`);
6. pieces of one photograph that a pale or flat part of it broke apart are joined
   (:data:`JOIN`), unless paper, text or a gutter lies between them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from cbir_utils import paths
from cbir_utils.engine.features import shard_rows
from cbir_utils.engine.models import file_digest
from cbir_utils.errors import ImageDecodeError
from cbir_utils.io import save_json
from cbir_utils.paths import region_name
from cbir_utils.sources import photo
from cbir_utils.sources.data import Collection, load_image

VERSION = 8
"""Bump when :func:`find_photos` cuts otherwise for the same settings (cached detections)."""
SIDE = 1024
"""Long side (px) a page is analysed at."""
BLOCK = photo.BLOCK
MODEL = Path(__file__).with_name("page_detector.npz")
"""The block classifier: a small perceptron (``mean``, ``scale`` of the features, then layers
``w0, b0, w1, b1, ...``; ReLU between, a sigmoid last), and the context classifier, the same
with keys prefixed ``context_``; written by ``benchmarks/pages.py --fit``."""
THRESHOLD = 0.8
MIN_AREA = 0.006
"""Smallest photograph, as a share of the page's area."""
MIN_FILL = 0.55
"""Smallest share of its box a region must fill."""
MIN_SIDE = 0.05
"""Smallest side of a photograph, as a share of the page's long side."""
MAX_ASPECT = 3.5
"""Longest side over shortest: a longer strip is a line of bold text or a rule."""
OPEN = 3
"""Side (blocks) of the opening that clears specks and thin bridges of the mask."""
XY_EMPTY = 0.2
"""A row or column of a region with at most this share of photograph blocks parts it."""
FLAT = 0.3
"""A gutter of paper varies along its length at most this share of a photograph column's median."""
GUTTER_FLAT = 0.45
"""The same for a gutter no wider than an eighth of :data:`MIN_SIDE` (a photo-story's: uneven
light and the verso showing through vary it more than a wide one)."""
GUTTER_STEP = 20
"""How much lighter than the photographs on either side such a gutter is (gray levels)."""
JOIN = 0.7
"""Two boxes side by side or stacked are one photograph when together they cover this share
of their union's box, no paper lies between them, the blocks there are more photograph than
not or bare of ink (not text or a caption) and no gutter crosses their union."""
INK = 100
"""Ink is this much darker than the paper (gray levels)."""
INK_SHARE = 0.01
"""Blocks of which less than this share is ink hold no text or caption (:func:`_join`)."""
EDGE = 0.005
"""A box this close to the scan's edge (share of its long side) is the sheet's border."""
MIN_MEAN = 0.6
"""Smallest mean probability of photograph over a box's blocks."""

Box = tuple[int, int, int, int]


def features(img: Image.Image) -> np.ndarray:
    """Block features ``(rows, cols, F)``: :func:`photo.block_features` of 8-pixel blocks, of
    16- and 32-pixel blocks around them (a text line's alternation shows at the scale of its
    pitch), and their averages over 3 x 3 and 9 x 9 blocks."""
    f = photo.block_features(img, side=SIDE)
    rows, cols = f.shape[:2]
    coarse = []
    for k in (2, 4):
        g = photo.block_features(img, side=SIDE // k)[..., :8]
        g = np.repeat(np.repeat(g, k, axis=0), k, axis=1)[:rows, :cols]
        pad = ((0, rows - g.shape[0]), (0, cols - g.shape[1]), (0, 0))
        coarse.append(np.pad(g, pad, mode="edge"))
    extra = [
        ndimage.uniform_filter(f[..., i], size=s, mode="nearest") for s in (3, 9) for i in range(8)
    ]
    return np.concatenate([f, *coarse, np.stack(extra, axis=-1)], axis=-1)


@lru_cache(maxsize=4)
def load_model(path: str | os.PathLike = MODEL) -> dict[str, np.ndarray]:
    """The arrays of a block classifier file (read without pickle)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def detector_id(model: dict[str, np.ndarray] | None = None) -> str:
    """Identifies the detector (its arrays and settings): the key of cached detections."""
    m = load_model() if model is None else model
    settings = (VERSION, SIDE, THRESHOLD, OPEN, XY_EMPTY, FLAT, GUTTER_FLAT, GUTTER_STEP)
    settings += (JOIN, INK, INK_SHARE, EDGE, MIN_AREA, MIN_FILL, MIN_SIDE, MAX_ASPECT, MIN_MEAN)
    h = hashlib.sha1(repr(settings).encode())
    for k in sorted(m):
        h.update(k.encode() + np.ascontiguousarray(m[k]).tobytes())
    return h.hexdigest()[:12]


def perceptron(m: dict[str, np.ndarray], f: np.ndarray, prefix: str = "") -> np.ndarray:
    """Probability of photograph of blocks of features ``f`` ``(rows, cols, F)``, by the
    perceptron of ``m`` whose arrays are named with ``prefix``."""
    x = ((f - m[prefix + "mean"]) / m[prefix + "scale"]).reshape(-1, f.shape[-1])
    n = sum(k.startswith(prefix + "w") for k in m)
    for i in range(n):
        x = x @ m[f"{prefix}w{i}"] + m[f"{prefix}b{i}"]
        if i < n - 1:
            x = np.maximum(x, 0)
    return (1.0 / (1.0 + np.exp(-x))).reshape(f.shape[:2])


def context(p: np.ndarray) -> np.ndarray:
    """What the context classifier adds to a block's features ``(rows, cols, 14)``: the block
    map ``p`` around it, averaged over squares of 3 to 31 blocks and along its row and column,
    its extremes and spread over 7 x 7 blocks, and how far (up to 12 blocks) the nearest block
    of the other kind is."""

    def mean(a, size):
        return ndimage.uniform_filter(a, size, mode="nearest")

    m7 = mean(p, 7)
    return np.stack([
        p, mean(p, 3), m7, mean(p, 15), mean(p, 31),
        mean(p, (1, 15)), mean(p, (1, 31)), mean(p, (15, 1)), mean(p, (31, 1)),
        ndimage.maximum_filter(p, 7, mode="nearest"), ndimage.minimum_filter(p, 7, mode="nearest"),
        np.sqrt(np.maximum(mean(p * p, 7) - m7 * m7, 0)),
        np.minimum(ndimage.distance_transform_edt(p >= 0.5), 12) / 12,
        np.minimum(ndimage.distance_transform_edt(p < 0.5), 12) / 12,
    ], axis=-1)  # fmt: skip


def skew(
    gray: np.ndarray, text: np.ndarray | None = None, limit: float = 2.0, step: float = 0.1
) -> float:
    """The page's skew (degrees, counter-clockwise as PIL rotates): the angle at which its
    ink's row profile is sharpest (text lines and rules line up).

    ``text``: where the ink counts, a mask of blocks (resized to the page); the rows of a
    halftone screen would line up at the screen's angle, so photographs are left out."""
    k = max(1, max(gray.shape) // 1000)
    g = gray[::k, ::k]
    ink = g < np.percentile(g, 10)
    if text is not None:
        rows = np.minimum(np.arange(g.shape[0]) * text.shape[0] // g.shape[0], text.shape[0] - 1)
        cols = np.minimum(np.arange(g.shape[1]) * text.shape[1] // g.shape[1], text.shape[1] - 1)
        ink &= text[np.ix_(rows, cols)]
    ys, xs = np.nonzero(ink)
    if not len(ys):  # a blank page: nothing to line up
        return 0.0
    best, angle = -1.0, 0.0
    for a in np.arange(-limit, limit + step / 2, step):
        rows = np.round(ys - xs * np.tan(np.deg2rad(a))).astype(np.int64)
        score = float(np.square(np.bincount(rows - rows.min()).astype(np.float64)).sum())
        if score > best:
            best, angle = score, float(a)
    return -angle


def _paper(a: np.ndarray, axis: int, flat: float = FLAT) -> np.ndarray:
    """Which columns (``axis=0``) or rows (``axis=1``) of ``a`` are bare paper: as light as
    the lightest quarter of ``a`` and flat along their length (a photograph's are not)."""
    mean, std = a.mean(axis=axis), a.std(axis=axis)
    return (mean >= np.percentile(a, 75)) & (std <= max(4.0, flat * float(np.median(std))))


def _runs(profile: np.ndarray, lo: int, hi: int, widest: int) -> list[tuple[int, int]]:
    """Runs ``[start, stop)`` of ``True`` in ``profile`` inside ``[lo, hi)``, at most ``widest``
    long (a gutter between photographs; a wider strip of paper inside one is sky or a wall)."""
    cuts, start = [], None
    for i in range(lo, hi):
        if profile[i] and start is None:
            start = i
        elif not profile[i] and start is not None:
            if i - start <= widest:
                cuts.append((start, i))
            start = None
    return cuts


def _split(gray: np.ndarray, box: Box, min_side: int) -> list[Box]:
    """``box`` trimmed of paper at its edges, and cut along gutters of paper that cross it
    whole (photographs printed a few pixels apart)."""
    x, y, w, h = box
    a = gray[y : y + h, x : x + w]
    if a.size == 0:
        return []
    rows, cols = np.flatnonzero(~_paper(a, 1)), np.flatnonzero(~_paper(a, 0))
    if not len(rows) or not len(cols):
        return []
    x, y = x + int(cols[0]), y + int(rows[0])
    w, h = int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
    a = gray[y : y + h, x : x + w]
    for axis, length in ((0, w), (1, h)):  # columns of paper first, then rows
        cuts = _runs(_paper(a, axis), min_side, length - min_side, max(3, min_side // 2))
        if not cuts:  # a photo-story's gutter: narrow, unevenly lit, between two edges
            narrow = _runs(_paper(a, axis, GUTTER_FLAT), min_side, length - min_side,
                           max(3, min_side // 8))  # fmt: skip
            cuts = [run for run in narrow if _edged(a, axis, *run)]
        if cuts:
            c = sum(cuts[0]) // 2
            parts = (
                [(x, y, c, h), (x + c, y, w - c, h)]
                if axis == 0
                else [(x, y, w, c), (x, y + c, w, h - c)]
            )
            return [b for p in parts for b in _split(gray, p, min_side)]
    return [(x, y, w, h)]


def _edged(a: np.ndarray, axis: int, start: int, stop: int) -> bool:
    """Whether the columns (``axis=0``) or rows ``[start, stop)`` of ``a`` (the lightest of
    them: a run of paper may take in a flat column of the photograph beside it) are lighter,
    along most of their length, by :data:`GUTTER_STEP` than ``a`` two pixels outside them on
    each side: a photograph's edge on either side of a gutter, not a pale band inside one."""
    b = a if axis == 0 else a.T
    if start < 2 or stop + 1 >= b.shape[1]:
        return False
    g = b[:, start:stop].max(axis=1)
    return min(np.median(g - b[:, start - 2]), np.median(g - b[:, stop + 1])) >= GUTTER_STEP


def _xy_cut(mask: np.ndarray, sl: tuple[slice, slice]) -> list[tuple[slice, slice]]:
    """The block region ``sl`` of ``mask`` cut where a whole row or column of it is (nearly)
    empty, recursively: regions that noise joined come apart."""
    m = mask[sl]
    for axis in (0, 1):
        empty = m.mean(axis=axis) <= XY_EMPTY
        inner = np.flatnonzero(empty[1:-1]) + 1
        if len(inner):
            c = int(inner[0])
            if axis == 0:
                a, b = (
                    (sl[0], slice(sl[1].start, sl[1].start + c)),
                    (sl[0], slice(sl[1].start + c + 1, sl[1].stop)),
                )
            else:
                a, b = (
                    (slice(sl[0].start, sl[0].start + c), sl[1]),
                    (slice(sl[0].start + c + 1, sl[0].stop), sl[1]),
                )
            return [
                c for part in (a, b) if mask[part].any() for c in _xy_cut(mask, _trim(mask, part))
            ]
    return [sl]


def _trim(mask: np.ndarray, sl: tuple[slice, slice]) -> tuple[slice, slice]:
    """Block region ``sl`` trimmed to the bounds of the blocks of ``mask`` in it (some)."""
    sub = mask[sl]
    r, c = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
    return (slice(sl[0].start + r[0], sl[0].start + r[-1] + 1),
            slice(sl[1].start + c[0], sl[1].start + c[-1] + 1))  # fmt: skip


def upright(
    img: Image.Image, model: dict[str, np.ndarray]
) -> tuple[Image.Image, float, np.ndarray, np.ndarray]:
    """Page ``img`` in gray turned upright (:func:`skew`), the angle it was turned by, and its
    block features and block map."""
    gray = img.convert("L")
    f = features(gray)
    p = perceptron(model, f)
    angle = skew(np.asarray(gray, dtype=np.float32), text=p < 0.5)
    if angle:
        gray = gray.rotate(-angle, resample=Image.BILINEAR, fillcolor=255)
        f = features(gray)
        p = perceptron(model, f)
    return gray, angle, f, p


def find_photos(
    img: Image.Image,
    model: dict[str, np.ndarray] | None = None,
    threshold: float = THRESHOLD,
) -> list[Box]:
    """Pixel boxes ``(x, y, w, h)`` of the photographs on page ``img``, top to bottom.

    The page is first turned upright (:func:`skew`); boxes are in ``img``'s own pixels. An
    empty list when the page holds none (text, drawings, a masthead only).
    """
    m = load_model() if model is None else model
    gray, angle, f, p = upright(img, m)
    q = perceptron(m, np.concatenate([f, context(p)], axis=-1), "context_")
    boxes = cut(np.asarray(gray, dtype=np.float32), p, q, threshold)
    return sorted((_unrotate(b, angle, img.size) for b in boxes), key=lambda b: (b[1], b[0]))


def cut(gray: np.ndarray, p: np.ndarray, q: np.ndarray, threshold: float = THRESHOLD) -> list[Box]:
    """Boxes of the photographs on upright page ``gray`` (pixels), from its block map ``p``
    and context map ``q`` (steps 3 to 6 of the module's docstring)."""
    size = gray.shape[::-1]
    k = max(size) / SIDE * BLOCK  # block -> pixel of the page
    min_side = int(MIN_SIDE * max(size))
    mask = _mask(p, threshold)
    boxes = _boxes(_regions(mask), gray, p, k, min_side)
    boxes = _whole(boxes, gray, q, _mask(q, threshold), mask, k, min_side)
    return _join(boxes, gray, p, k, min_side)


def _mask(p: np.ndarray, threshold: float) -> np.ndarray:
    """The blocks of map ``p`` at ``threshold`` or above, cleared of specks (:data:`OPEN`)."""
    return ndimage.binary_opening(p >= threshold, structure=np.ones((OPEN, OPEN)))


def _regions(mask: np.ndarray) -> list[tuple[slice, slice]]:
    """Regions of blocks of ``mask`` (:func:`_xy_cut`) that fill their box (:data:`MIN_FILL`)."""
    labels, _ = ndimage.label(mask)
    return [
        part
        for i, sl in enumerate(ndimage.find_objects(labels), start=1)
        for part in _xy_cut(labels == i, sl)
        if (labels[part] == i).mean() >= MIN_FILL
    ]


def _boxes(parts, gray: np.ndarray, p: np.ndarray, k: float, min_side: int) -> list[Box]:
    """The pixel boxes of block regions ``parts``, cut along gutters (:func:`_split`), that
    :func:`_plausible` takes for photographs by the map ``p``."""
    size, out = gray.shape[::-1], []
    for rows, cols in parts:
        x0, y0 = int(cols.start * k), int(rows.start * k)
        x1, y1 = min(size[0], int(cols.stop * k)), min(size[1], int(rows.stop * k))
        out += [b for b in _split(gray, (x0, y0, x1 - x0, y1 - y0), min_side)
                if _plausible(b, p, k, size)]  # fmt: skip
    return out


def _whole(
    boxes: list[Box], gray: np.ndarray, q: np.ndarray, q_mask: np.ndarray, mask: np.ndarray,
    k: float, min_side: int,
) -> list[Box]:  # fmt: skip
    """``boxes`` where a photograph of the context map ``q`` (its blocks ``q_mask``) holds
    pieces of them (more than half of each, each smaller than it) replaced by it, when its
    blocks outside them are photograph by ``q`` or bare of ink (:func:`_bare`). Its regions are
    trimmed to the blocks of the block map's ``mask`` (the context map runs a block or two
    past a photograph's edge, onto its caption)."""
    parts = [_trim(mask, part) for part in _regions(q_mask) if mask[part].any()]
    for b in _boxes(parts, gray, q, k, min_side):
        pieces = [a for a in boxes if 2 * _overlap(a, b) > _area(a)]
        if not pieces or any(_area(a) >= _area(b) for a in pieces):
            continue  # nothing to make whole, or a box of the block map's as large
        if _bare(gray, q, k, pieces, b):
            boxes = [a for a in boxes if a not in pieces] + [b]
    return boxes


def _join(boxes: list[Box], gray: np.ndarray, p: np.ndarray, k: float, min_side: int) -> list[Box]:
    """``boxes`` with the pieces of one photograph joined (:data:`JOIN`): two boxes side by
    side or stacked, with no paper between them and blocks there that are no caption or text
    (:func:`_bare`), whose union :func:`_split` leaves whole and :func:`_plausible`
    takes for a photograph."""
    size = gray.shape[::-1]
    for i, a in enumerate(boxes):
        for j in range(i + 1, len(boxes)):
            b = boxes[j]
            x0, y0 = min(a[0], b[0]), min(a[1], b[1])
            u = (x0, y0, max(a[0] + a[2], b[0] + b[2]) - x0, max(a[1] + a[3], b[1] + b[3]) - y0)
            if _area(a) + _area(b) - _overlap(a, b) < JOIN * _area(u):
                continue
            if not _bare(gray, p, k, [a, b], u) or _paper_between(gray, a, b, u):
                continue
            parts = _split(gray, u, min_side)
            if len(parts) == 1 and _plausible(parts[0], p, k, size):
                rest = [c for t, c in enumerate(boxes) if t not in (i, j)]
                return _join([*rest, parts[0]], gray, p, k, min_side)
    return boxes


def _bare(gray: np.ndarray, p: np.ndarray, k: float, pieces: list[Box], union: Box) -> bool:
    """Whether the blocks of ``union`` outside boxes ``pieces`` are more photograph than not
    (mean probability >= 0.5), or bare of ink (:data:`INK_SHARE`): the pale or flat part of a
    photograph, not a caption or text; true when there are none."""
    rows, cols = _blocks(union, k)
    inner = p[rows, cols]
    between = np.ones(inner.shape, dtype=bool)
    for r, c in (_blocks(a, k) for a in pieces):
        between[max(0, r.start - rows.start) : max(0, r.stop - rows.start),
                max(0, c.start - cols.start) : max(0, c.stop - cols.start)] = False  # fmt: skip
    if not between.any() or float(inner[between].mean()) >= 0.5:
        return True
    x, y, w, h = union
    area = gray[y : y + h, x : x + w]
    row_of = np.minimum((np.arange(y, y + h) / k).astype(int) - rows.start, between.shape[0] - 1)
    col_of = np.minimum((np.arange(x, x + w) / k).astype(int) - cols.start, between.shape[1] - 1)
    ink = area[between[np.ix_(row_of, col_of)]] < np.percentile(area, 95) - INK
    return not ink.size or float(ink.mean()) < INK_SHARE


def _blocks(box: Box, k: float) -> tuple[slice, slice]:
    """The blocks (rows, columns) that pixel box ``box`` covers, ``k`` pixels a block."""
    x, y, w, h = box
    return slice(int(y / k), int(np.ceil((y + h) / k))), slice(
        int(x / k), int(np.ceil((x + w) / k))
    )


def _paper_between(gray: np.ndarray, a: Box, b: Box, union: Box) -> bool:
    """Whether boxes ``a`` and ``b`` have a column (a row) of paper of ``union`` between them,
    or are neither side by side (sharing half the shorter height) nor stacked (half the
    narrower width)."""
    x, y, w, h = union
    area = gray[y : y + h, x : x + w]
    for axis, (o, o_len, g, g_len) in ((0, (1, 3, 0, 2)), (1, (0, 2, 1, 3))):
        if _span(a[o], a[o_len], b[o], b[o_len]) >= min(a[o_len], b[o_len]) / 2:
            first, second = sorted((a, b), key=lambda box: box[g])
            g0, g1 = first[g] + first[g_len] - union[g], second[g] - union[g]
            return g1 > g0 and bool(_paper(area, axis)[g0:g1].any())
    return True


def _area(b: Box) -> int:
    return b[2] * b[3]


def _overlap(a: Box, b: Box) -> int:
    return _span(a[0], a[2], b[0], b[2]) * _span(a[1], a[3], b[1], b[3])


def _span(a0: int, a: int, b0: int, b: int) -> int:
    """Length of the overlap of the intervals ``[a0, a0 + a)`` and ``[b0, b0 + b)``."""
    return max(0, min(a0 + a, b0 + b) - max(a0, b0))


def _plausible(box: Box, p: np.ndarray, k: float, size: tuple[int, int]) -> bool:
    """A photograph's size and shape, blocks that are mostly photograph, and clear of the
    scan's edges (a page's photographs lie inside its margins; the edges hold the scanner's
    bed and the sheet's border)."""
    x, y, w, h = box
    m = EDGE * max(size)
    if x <= m or y <= m or x + w >= size[0] - m or y + h >= size[1] - m:
        return False
    if min(w, h) < MIN_SIDE * max(size) or w * h < MIN_AREA * size[0] * size[1]:
        return False
    if max(w, h) > MAX_ASPECT * min(w, h):
        return False
    inner = p[_blocks(box, k)]
    return inner.size > 0 and float(inner.mean()) >= MIN_MEAN


def _unrotate(box: Box, angle: float, size: tuple[int, int]) -> Box:
    """The box, in the upright page, as a box of the page rotated by ``angle`` (its bounds)."""
    if not angle:
        return box
    x0, y0, x1, y1 = photo.rotated_bounds(box, angle, size)
    x0, y0 = max(0, int(x0)), max(0, int(y0))
    x1, y1 = min(size[0], int(np.ceil(x1))), min(size[1], int(np.ceil(y1)))
    return (x0, y0, x1 - x0, y1 - y0)


# ------------------------------------------------------------------ pages of a collection

NO_PHOTO = "no photograph found on this page; it is not indexed"


def _detection(path, cache_dir=None, detect: bool = True) -> dict | None:
    """``{"boxes": [...], "size": [w, h]}`` of a page file (the size of the page as
    :func:`cbir_utils.sources.data.load_image` decodes it, which the boxes are in), cached by the
    file's SHA-1 and :func:`detector_id`; ``None`` when not cached and ``detect`` is off."""
    folder = Path(cache_dir) if cache_dir is not None else paths.OUTPUTS_DIR / "cache" / "pages"
    f = folder / detector_id() / f"{file_digest(path)}.json"
    try:
        found = json.loads(f.read_text())
        return {"boxes": [tuple(b) for b in found["boxes"]], "size": tuple(found["size"])}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not cached yet, or a damaged entry: detect again
    if not detect:
        return None
    page = load_image(path)
    found = {"boxes": find_photos(page), "size": page.size}
    save_json(f, {"boxes": [list(b) for b in found["boxes"]], "size": list(page.size)})
    return found


def detect_cached(
    path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, detect: bool = True
) -> list[Box] | None:
    """:func:`find_photos` of a page file, cached (``outputs/cache/pages/`` by default);
    ``None`` when not cached and ``detect`` is off."""
    found = _detection(path, cache_dir, detect)
    return None if found is None else found["boxes"]


def detect_shard(
    col: Collection, shard: int, num_shards: int, cache_dir=None, progress: bool = True
) -> int:
    """Detect the photographs of shard ``shard`` of ``num_shards`` of the pages of ``col``
    (a SLURM array task; cached per page); returns how many pages of the *other* shards are
    not detected yet (the descriptors wait for every page's photographs)."""
    rows = shard_rows(len(col.items), shard, num_shards)
    page_paths = col.items["path"].tolist()
    for p in tqdm(
        page_paths[rows.start : rows.stop], desc="photographs on pages", disable=not progress
    ):
        try:
            detect_cached(p, cache_dir)
        except ImageDecodeError:
            pass  # listed in skipped.csv when the collection is expanded
    return sum(
        detect_cached(p, cache_dir, detect=False) is None
        for i, p in enumerate(page_paths) if i not in rows
    )  # fmt: skip


def region_url(iiif_image: str, box: Box, page_size: tuple[int, int]) -> str:
    """The IIIF Image API URL of ``box`` (pixels of the fetched page of size ``page_size``),
    from the page's own image URL ``{service}/{region}/{size}/{rotation}/{quality}``.

    Percentages of the full image (``pct:``) when the page was the full image; else pixels
    of the full image, scaled from the page's region."""
    parts = str(iiif_image).rsplit("/", 4)
    if len(parts) != 5:
        return ""
    service, region = parts[0], parts[1]
    x, y, w, h = box
    W, H = page_size
    if region == "full":
        r = f"pct:{100 * x / W:.3f},{100 * y / H:.3f},{100 * w / W:.3f},{100 * h / H:.3f}"
    else:
        try:
            rx, ry, rw, rh = (float(v) for v in region.split(","))
        except ValueError:
            return ""
        sx, sy = rw / W, rh / H
        r = f"{round(rx + x * sx)},{round(ry + y * sy)},{round(w * sx)},{round(h * sy)}"
    return f"{service}/{r}/max/0/default.jpg"


def expand(
    col: Collection, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> Collection:
    """The photographs on the pages of ``col``: one item per photograph found, named
    ``<page>#xywh=x,y,w,h`` (:func:`cbir_utils.paths.region_name`), with its page's scene and
    metadata, ``box`` (``x,y,w,h``) and, for IIIF pages, ``iiif_image`` the region's URL.

    A page with no photograph becomes a ``no_photograph`` row of ``skipped``; one that
    cannot be decoded, a row of its kind. Nothing stops the others.
    """
    rows, skipped = [], []
    records = col.items.to_dict("records")
    for row in tqdm(records, desc="photographs on pages", disable=not progress):
        why = {"relpath": row["relpath"], "scene": row["scene"]}
        try:
            found = _detection(row["path"], cache_dir)
        except ImageDecodeError as e:
            skipped.append({**why, "kind": e.kind, "reason": e.reason})
            continue
        if not found["boxes"]:
            skipped.append({**why, "kind": "no_photograph", "reason": NO_PHOTO})
        for b in found["boxes"]:
            item = {**row, "relpath": region_name(row["relpath"], b),
                    "path": region_name(row["path"], b), "box": ",".join(map(str, b))}  # fmt: skip
            if str(row.get("iiif_image", "")).startswith("http"):
                item["iiif_image"] = region_url(row["iiif_image"], b, found["size"])
            rows.append(item)
    columns = [*col.items.columns, *([] if "box" in col.items.columns else ["box"])]
    items = pd.DataFrame(rows, columns=columns).fillna("")
    extra = pd.DataFrame(skipped, columns=list(col.skipped.columns))
    return replace(col, items=items, skipped=pd.concat([col.skipped, extra], ignore_index=True))


def best_matches(
    query_desc: np.ndarray, region_desc: np.ndarray, names: Sequence[str]
) -> tuple[list[str], list[float]]:
    """For each query descriptor, the most similar photograph found on pages (its name) and
    the cosine (descriptors L2-normalised)."""
    scores = np.asarray(query_desc, np.float32) @ np.asarray(region_desc, np.float32).T
    best = scores.argmax(axis=1)
    return [str(names[i]) for i in best], [float(scores[q, i]) for q, i in enumerate(best)]
