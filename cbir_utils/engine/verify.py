"""Local-feature matching with geometric verification, and re-ranking by inlier count.

Two printings of one photograph share many local details that survive cropping, halftoning
and re-toning; a homography fitted with RANSAC keeps the matches consistent with one
plane-to-plane mapping. Their number, the *inliers*, separates "the same photograph" (tens
to hundreds) from "a similar scene" (a handful). :func:`match_pair` matches two images
(mirrored printings too), :func:`draw_matches` shows it, :func:`rerank` re-scores a query's
best candidates, and :func:`graph_from_lists` links the collection's verified printings.

Images are converted to gray, shrunk to ``max_side`` pixels and blurred (``descreen``, a
Gaussian sigma in working pixels) so that a halftone screen gives no dot-sized keypoints.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from threadpoolctl import ThreadpoolController
from tqdm.auto import tqdm

from cbir_utils.engine import models
from cbir_utils.errors import InputError
from cbir_utils.io import atomic_write_bytes, save_figure
from cbir_utils.sources.data import load_image

METHODS = ("sift", "orb")
MAX_SIDE = 320
"""Long side (px) of the working image local features are computed on."""
DESCREEN_SIGMA = 1.0
"""Gaussian sigma (px of the working image) applied before detection, against halftone dots."""
MAX_FEATURES = 500
"""Keypoints kept per image (the strongest)."""
RATIO = 0.8
"""Lowe's ratio test: a match is kept when its distance is below ``RATIO`` x the second best."""
RANSAC_THRESHOLD = 0.02
"""RANSAC reprojection threshold, as a fraction of the working image's long side."""
MIN_INLIERS = 8
"""Inlier counts below this are treated as chance (no verified match)."""
SATURATION = 30
"""Inlier count giving the full re-ranking bonus."""
EDGE_INLIERS = 12
"""Inliers needed for an edge of the collection's verification graph (a stricter test than
``MIN_INLIERS``: chained false edges would merge unrelated scenes)."""

ImageLike = str | os.PathLike | Image.Image | np.ndarray
_THREADPOOLS = ThreadpoolController()


@dataclass
class LocalFeatures:
    """Keypoints (``xy``, original pixels) and descriptors of one image; ``xy_mirror`` and
    ``descriptors_mirror`` those of its mirror (in the mirrored image's pixels); ``image`` the
    working gray image, for drawing; ``scale`` working pixels per original pixel.
    """

    xy: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int]
    scale: float
    image: np.ndarray = field(repr=False)
    xy_mirror: np.ndarray | None = None
    descriptors_mirror: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.xy)


@dataclass
class Match:
    """The geometric verification of two images: ``matches`` ``(M, 2)`` passed the ratio test,
    ``inliers`` ``(M,)`` agree with ``homography`` (a's original pixels to b's); keypoints in
    original pixels (b's mirror mapped back when ``mirrored``).
    """

    method: str
    keypoints_a: np.ndarray
    keypoints_b: np.ndarray
    matches: np.ndarray
    inliers: np.ndarray
    homography: np.ndarray | None
    mirrored: bool
    size_a: tuple[int, int]
    size_b: tuple[int, int]
    seconds: float = 0.0
    image_a: np.ndarray | None = field(default=None, repr=False)
    image_b: np.ndarray | None = field(default=None, repr=False)
    scale_a: float = 1.0
    scale_b: float = 1.0

    @property
    def n_matches(self) -> int:
        """Tentative matches (after the ratio test)."""
        return int(len(self.matches))

    @property
    def n_inliers(self) -> int:
        """Matches consistent with the homography."""
        return int(self.inliers.sum())

    @property
    def inlier_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Matched positions ``(xy_a, xy_b)`` of the inliers, original pixels, ``(K, 2)`` each."""
        m = self.matches[self.inliers]
        return self.keypoints_a[m[:, 0]], self.keypoints_b[m[:, 1]]

    def verified(self, min_inliers: int = MIN_INLIERS) -> bool:
        """At least ``min_inliers`` inliers: the two images show the same photograph."""
        return self.n_inliers >= min_inliers


# --------------------------------------------------------------------------- features


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")


def _gray_array(image: ImageLike) -> tuple[np.ndarray, str]:
    if isinstance(image, (str, os.PathLike)):
        return np.asarray(load_image(image).convert("L")), str(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L")), ""
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr[..., :3].astype(np.uint8), cv2.COLOR_RGB2GRAY)
    if arr.ndim != 2:
        raise InputError(f"Expected an image path, a PIL image or an array, got shape {arr.shape}.")
    return arr.astype(np.uint8, copy=False), ""


_DETECTORS: dict[tuple[str, int], cv2.Feature2D] = {}


def _detector(method: str, max_features: int) -> cv2.Feature2D:
    key = (method, max_features)
    if key not in _DETECTORS:
        if method == "sift":
            _DETECTORS[key] = cv2.SIFT_create(nfeatures=max_features)
        else:
            _DETECTORS[key] = cv2.ORB_create(nfeatures=max_features, fastThreshold=10)
    return _DETECTORS[key]


def _detect(work: np.ndarray, method: str, max_features: int) -> tuple[np.ndarray, np.ndarray]:
    kps, desc = _detector(method, max_features).detectAndCompute(work, None)
    if desc is None or not kps:
        dim, dtype = (128, np.float32) if method == "sift" else (32, np.uint8)
        return np.zeros((0, 2), np.float32), np.zeros((0, dim), dtype)
    xy = np.array([k.pt for k in kps], dtype=np.float32)
    if method == "sift":  # RootSIFT: Hellinger kernel, more robust matching
        desc = desc / (np.abs(desc).sum(axis=1, keepdims=True) + 1e-7)
        desc = np.sqrt(desc).astype(np.float32)
    return xy, desc


def local_features(
    image: ImageLike,
    method: str = "sift",
    max_side: int = MAX_SIDE,
    descreen: float = DESCREEN_SIGMA,
    max_features: int = MAX_FEATURES,
    mirror: bool = True,
) -> LocalFeatures:
    """Keypoints and descriptors of one image (a path, PIL image or array) and of its mirror:
    RootSIFT (``"sift"``) or ORB (faster, weaker), on a working image of ``max_side`` at most.
    """
    _check_method(method)
    if int(max_side) < 32:
        raise InputError(f"max_side must be at least 32, got {max_side!r}.")
    if descreen < 0:
        raise InputError(f"descreen must be >= 0, got {descreen!r}.")
    gray, source = _gray_array(image)
    h, w = gray.shape
    scale = min(1.0, int(max_side) / max(h, w))
    shown = gray
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        shown = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    work = cv2.GaussianBlur(shown, (0, 0), float(descreen)) if descreen > 0 else shown
    work = np.ascontiguousarray(work)
    xy, desc = _detect(work, method, max_features)
    xy_m = desc_m = None
    if mirror:
        xy_m, desc_m = _detect(np.ascontiguousarray(work[:, ::-1]), method, max_features)
        xy_m = xy_m / scale
    return LocalFeatures(
        xy=xy / scale,
        descriptors=desc,
        size=(int(w), int(h)),
        scale=float(scale),
        image=np.ascontiguousarray(shown),
        xy_mirror=xy_m,
        descriptors_mirror=desc_m,
        source=source,
    )


# --------------------------------------------------------------------------- matching


def _ratio_matches(da: np.ndarray, db: np.ndarray, method: str, ratio: float) -> np.ndarray:
    """Index pairs ``(i, j)`` passing Lowe's ratio test, one-to-one on ``j``."""
    if len(da) < 2 or len(db) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    if method == "sift":
        # RootSIFT rows have unit L2 norm: squared distance = 2 - 2 * dot (one BLAS product,
        # several times faster than OpenCV's brute-force k-NN matcher)
        sim = da @ db.T
        j1 = sim.argmax(axis=1)
        rows = np.arange(len(da))
        s1 = sim[rows, j1]
        sim[rows, j1] = -np.inf
        s2 = sim.max(axis=1)
        d1 = np.sqrt(np.maximum(2.0 - 2.0 * s1, 0.0))
        d2 = np.sqrt(np.maximum(2.0 - 2.0 * s2, 0.0))
        keep = d1 < ratio * d2
        pairs = np.stack([rows[keep], j1[keep]], axis=1).astype(np.int64)
    else:
        knn = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
        pairs = np.array(
            [
                (m.queryIdx, m.trainIdx)
                for m, n in (p for p in knn if len(p) == 2)
                if m.distance < ratio * n.distance
            ],
            dtype=np.int64,
        ).reshape(-1, 2)
    if not len(pairs):
        return np.zeros((0, 2), dtype=np.int64)
    # one-to-one: keep the first match of each keypoint of b
    _, first = np.unique(pairs[:, 1], return_index=True)
    return pairs[np.sort(first)]


def _verify(
    xa: np.ndarray, xb: np.ndarray, pairs: np.ndarray, threshold_px: float
) -> tuple[np.ndarray, np.ndarray | None]:
    inliers = np.zeros(len(pairs), dtype=bool)
    if len(pairs) < 4:
        return inliers, None
    src = xa[pairs[:, 0]].reshape(-1, 1, 2).astype(np.float32)
    dst = xb[pairs[:, 1]].reshape(-1, 1, 2).astype(np.float32)
    H, mask = cv2.findHomography(
        src, dst, cv2.USAC_MAGSAC, threshold_px, maxIters=2000, confidence=0.999
    )
    if H is None or mask is None:
        return inliers, None
    return mask.ravel().astype(bool), H


def match_features(
    a: LocalFeatures,
    b: LocalFeatures,
    method: str = "sift",
    ratio: float = RATIO,
    ransac_threshold: float = RANSAC_THRESHOLD,
    mirror: bool = True,
) -> Match:
    """Match precomputed features (see :func:`local_features`); arguments as :func:`match_pair`."""
    _check_method(method)
    if not 0.0 < ratio <= 1.0:
        raise InputError(f"ratio must be in (0, 1], got {ratio!r}.")
    t0 = time.perf_counter()
    # threshold in original pixels of b, from a fraction of b's long side
    thr = float(ransac_threshold) * max(b.size)
    candidates = [(False, b.xy, b.descriptors)]
    if mirror and b.descriptors_mirror is not None:
        candidates.append((True, b.xy_mirror, b.descriptors_mirror))
    # small matrix products: BLAS threads only add overhead (15x slower on a busy CPU)
    with _THREADPOOLS.limit(limits=1, user_api="blas"):
        best = _best_of(a, candidates, method, ratio, thr)
    mirrored, xy_b, pairs, inliers, H = best
    if mirrored:  # back to b's own pixels: x -> width - x
        width = b.image.shape[1] / b.scale
        flip = np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        xy_b = np.c_[width - xy_b[:, 0], xy_b[:, 1]].astype(np.float32)
        H = flip @ H if H is not None else None
    return Match(
        method=method,
        keypoints_a=a.xy,
        keypoints_b=xy_b,
        matches=pairs,
        inliers=inliers,
        homography=H,
        mirrored=mirrored,
        size_a=a.size,
        size_b=b.size,
        seconds=time.perf_counter() - t0,
        image_a=a.image,
        image_b=b.image,
        scale_a=a.scale,
        scale_b=b.scale,
    )


def _best_of(a: LocalFeatures, candidates: list, method: str, ratio: float, thr: float) -> tuple:
    """The candidate (plain, then mirrored) with the most inliers."""
    best = None
    for mirrored, xy_b, d_b in candidates:
        if best is not None and best[3].sum() >= 2 * MIN_INLIERS:
            break  # clearly verified as printed: no need to try the mirror
        pairs = _ratio_matches(a.descriptors, d_b, method, ratio)
        # estimated in the mirrored image's own frame (RANSAC rejects reflections)
        inliers, H = _verify(a.xy, xy_b, pairs, thr)
        if best is None or inliers.sum() > best[3].sum():
            best = (mirrored, xy_b, pairs, inliers, H)
    return best


def match_pair(
    image_a: ImageLike | LocalFeatures,
    image_b: ImageLike | LocalFeatures,
    method: str = "sift",
    max_side: int = MAX_SIDE,
    ratio: float = RATIO,
    descreen: float = DESCREEN_SIGMA,
    mirror: bool = True,
    max_features: int = MAX_FEATURES,
    ransac_threshold: float = RANSAC_THRESHOLD,
) -> Match:
    """Match two images (paths, images, arrays or :class:`LocalFeatures`) and verify geometrically.

    Lowe's ratio test, then a homography by RANSAC (MAGSAC++, ``ransac_threshold`` a fraction
    of b's long side); with ``mirror`` the mirror of b is tried too and the better kept, since
    plates were sometimes printed flipped. ``match.n_inliers`` is the evidence.
    """
    t0 = time.perf_counter()
    opts = dict(method=method, max_side=max_side, descreen=descreen, max_features=max_features)
    fa = (
        image_a
        if isinstance(image_a, LocalFeatures)
        else local_features(image_a, mirror=False, **opts)
    )
    fb = (
        image_b
        if isinstance(image_b, LocalFeatures)
        else local_features(image_b, mirror=mirror, **opts)
    )
    m = match_features(fa, fb, method, ratio, ransac_threshold, mirror)
    m.seconds = time.perf_counter() - t0
    return m


# --------------------------------------------------------------------------- drawing


def draw_matches(
    match: Match,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    max_lines: int = 150,
    show_outliers: bool = False,
):
    """The two images side by side, ``max_lines`` inlier matches joined by lines (rejected ones
    too, thin and red, with ``show_outliers``), the inlier count in the title.
    """
    import matplotlib.pyplot as plt

    if match.image_a is None or match.image_b is None:
        raise InputError("This Match carries no images to draw (it was built without them).")
    ia, ib = match.image_a, match.image_b
    if match.mirrored:
        ib = ib[:, ::-1]
    ha, wa = ia.shape
    hb, wb = ib.shape
    h = max(ha, hb)
    gap = 12
    canvas = np.full((h, wa + gap + wb), 255, dtype=np.uint8)
    canvas[(h - ha) // 2 : (h - ha) // 2 + ha, :wa] = ia
    canvas[(h - hb) // 2 : (h - hb) // 2 + hb, wa + gap :] = ib
    fig, ax = plt.subplots(
        figsize=(min(16, 10 * (wa + wb + gap) / h / 2 + 2), 6), layout="constrained"
    )
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255)
    ax.set_axis_off()

    def to_canvas(xy_a: np.ndarray, xy_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pa = xy_a * match.scale_a + [0, (h - ha) // 2]
        pb = xy_b * match.scale_b
        if match.mirrored:  # b is drawn as printed in a's orientation (its mirror)
            pb = np.c_[wb - pb[:, 0], pb[:, 1]]
        pb = pb + [wa + gap, (h - hb) // 2]
        return pa, pb

    if show_outliers and match.n_matches:
        m = match.matches[~match.inliers]
        pa, pb = to_canvas(match.keypoints_a[m[:, 0]], match.keypoints_b[m[:, 1]])
        for (x0, y0), (x1, y1) in zip(pa, pb):
            ax.plot([x0, x1], [y0, y1], color="tab:red", lw=0.4, alpha=0.4)
    xa, xb = match.inlier_pairs
    if len(xa):
        keep = np.unique(np.linspace(0, len(xa) - 1, min(max_lines, len(xa))).round().astype(int))
        pa, pb = to_canvas(xa[keep], xb[keep])
        colors = plt.cm.viridis(np.linspace(0, 1, len(keep)))
        for (x0, y0), (x1, y1), c in zip(pa, pb, colors):
            ax.plot([x0, x1], [y0, y1], color=c, lw=0.8, alpha=0.85)
        ax.scatter(pa[:, 0], pa[:, 1], s=6, c=colors)
        ax.scatter(pb[:, 0], pb[:, 1], s=6, c=colors)
    verdict = "same photograph" if match.verified() else "not verified"
    text = f"{match.n_inliers} inliers of {match.n_matches} matches ({verdict}"
    text += ", mirrored)" if match.mirrored else ")"
    ax.set_title(f"{title}\n{text}" if title else text, fontsize=11)
    if path is not None:
        save_figure(path, fig)
    return fig


# --------------------------------------------------------------------------- re-ranking


class LocalFeatureStore:
    """Local features computed once per image (with its mirror) and kept in memory by path.

    With ``cache_dir`` they are also written to disk, one ``.npz`` per image keyed by content
    and settings, for later searches, other processes and resumed runs. With
    ``remember_matches`` every (query, candidate) verification is kept too, so ranking again
    with other descriptors re-uses them.
    """

    def __init__(
        self,
        method: str = "sift",
        max_side: int = MAX_SIDE,
        descreen: float = DESCREEN_SIGMA,
        max_features: int = MAX_FEATURES,
        remember_matches: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        _check_method(method)
        self.options = dict(
            method=method, max_side=max_side, descreen=descreen, max_features=max_features
        )
        self._store: dict[str, LocalFeatures] = {}
        self.cache_dir: Path | None = None
        if cache_dir is not None:
            key = json.dumps({**self.options, "cv2": cv2.__version__}, sort_keys=True)
            self.cache_dir = Path(cache_dir) / hashlib.sha1(key.encode()).hexdigest()[:12]
        self.matches: dict[tuple[str, str], tuple[int, bool]] | None = (
            {} if remember_matches else None
        )

    @property
    def method(self) -> str:
        """The local-feature method."""
        return self.options["method"]

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, path: str | os.PathLike) -> bool:
        return str(path) in self._store

    def get(self, path: str | os.PathLike) -> LocalFeatures:
        """Features of ``path`` (computed on first use, or read from the disk cache)."""
        key = str(path)
        if key not in self._store:
            feats, file = None, None
            if self.cache_dir is not None:
                digest = models.file_digest(key)
                file = self.cache_dir / digest[:2] / f"{digest}.npz"
                feats = _read_features(file, key)
            if feats is None:
                feats = local_features(key, mirror=True, **self.options)
                if file is not None:
                    _write_features(file, feats)
            self._store[key] = feats
        return self._store[key]

    def precompute(
        self, paths: Sequence[str | os.PathLike], progress: bool = True, keep: bool = True
    ) -> None:
        """Compute the features of ``paths`` now; ``keep=False`` (with a ``cache_dir``) writes them
        to disk only, memory flat, as a shard job does. Images already on disk are read.
        """
        for p in tqdm(paths, desc="Local features", unit="img", disable=not progress):
            self.get(p)
            if not keep:
                self._store.pop(str(p), None)


def _write_features(file: Path, f: LocalFeatures) -> None:
    buf = io.BytesIO()
    extra = {}
    if f.xy_mirror is not None:
        extra = {"xy_mirror": f.xy_mirror, "descriptors_mirror": f.descriptors_mirror}
    np.savez(buf, xy=f.xy, descriptors=f.descriptors, size=np.asarray(f.size),
             scale=np.float64(f.scale), shown=np.asarray(f.image.shape[:2]), **extra)  # fmt: skip
    try:
        atomic_write_bytes(file, buf.getvalue())
    except OSError:
        pass  # the cache is an optimisation only


def _read_features(file: Path, source: str) -> LocalFeatures | None:
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            shown = tuple(int(v) for v in z["shown"])
            return LocalFeatures(
                xy=z["xy"], descriptors=z["descriptors"],
                size=(int(z["size"][0]), int(z["size"][1])), scale=float(z["scale"]),
                image=np.broadcast_to(np.uint8(0), shown),  # not stored: shape only
                xy_mirror=z["xy_mirror"] if "xy_mirror" in z.files else None,
                descriptors_mirror=z["descriptors_mirror"] if "xy_mirror" in z.files else None,
                source=source,
            )  # fmt: skip
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable (e.g. truncated): computed again


def inlier_bonus(
    n_inliers: np.ndarray, min_inliers: int = MIN_INLIERS, saturation: int = SATURATION
) -> np.ndarray:
    """Verification evidence in [0, 1]: 0 below ``min_inliers``, then linear, 1 at ``saturation``."""
    n = np.asarray(n_inliers, dtype=np.float64)
    if saturation <= min_inliers:
        raise InputError(f"saturation ({saturation}) must exceed min_inliers ({min_inliers}).")
    return np.clip((n - min_inliers + 1) / (saturation - min_inliers + 1), 0.0, 1.0) * (
        n >= min_inliers
    )


@dataclass
class Reranked:
    """One query re-ranked: ``order`` best first; ``scores`` and ``inliers`` (``-1``: not verified)
    of every candidate in the given order.
    """

    order: np.ndarray
    scores: np.ndarray
    inliers: np.ndarray
    mirrored: np.ndarray
    seconds: float


def rerank(
    query: ImageLike | LocalFeatures,
    candidate_paths: Sequence[str | os.PathLike],
    scores: Sequence[float] | np.ndarray,
    top_n: int = 50,
    weight: float = 1.0,
    min_inliers: int = MIN_INLIERS,
    saturation: int = SATURATION,
    store: LocalFeatureStore | None = None,
    ratio: float = RATIO,
) -> Reranked:
    """Re-score the ``top_n`` best candidates by geometric verification.

    Each verified candidate gets ``score + weight * inlier_bonus(n_inliers)`` (full ``weight``
    from ``saturation`` inliers, nothing under ``min_inliers``), the others keep their score:
    the bonus is never negative, so verified printings rise above look-alikes and the rest
    keep their order.
    """
    t0 = time.perf_counter()
    s = np.asarray(scores, dtype=np.float64).copy()
    if s.ndim != 1 or len(s) != len(candidate_paths):
        raise InputError(
            f"scores must be 1-D with one value per candidate ({len(candidate_paths)}), got shape {s.shape}."
        )
    if top_n < 0:
        raise InputError(f"top_n must be >= 0, got {top_n!r}.")
    store = store if store is not None else LocalFeatureStore()
    q = query
    if not isinstance(q, LocalFeatures):
        if isinstance(q, (str, os.PathLike)) and str(q) in store:
            q = store.get(q)
        else:
            q = local_features(q, mirror=False, **store.options)
    finite = np.isfinite(s)
    top = np.argsort(-np.where(finite, s, -np.inf), kind="stable")[: min(top_n, int(finite.sum()))]
    inliers = np.full(len(s), -1, dtype=np.int64)
    mirrored = np.zeros(len(s), dtype=bool)
    memo = store.matches if q.source else None
    for j in top:
        key = (q.source, str(candidate_paths[j]))
        if memo is not None and key in memo:
            inliers[j], mirrored[j] = memo[key]
            continue
        m = match_features(q, store.get(candidate_paths[j]), store.method, ratio)
        inliers[j], mirrored[j] = m.n_inliers, m.mirrored
        if memo is not None:
            memo[key] = (m.n_inliers, m.mirrored)
    verified = inliers >= 0
    s[verified] += weight * inlier_bonus(inliers[verified], min_inliers, saturation)
    order = np.argsort(-np.where(finite, s, -np.inf), kind="stable")
    return Reranked(order, s, inliers, mirrored, time.perf_counter() - t0)


# --------------------------------------------------------------------------- collection graph


@dataclass
class VerificationGraph:
    """Which images of a collection are verified printings of one another.

    Every image is verified against its ``top_n`` nearest neighbours at indexing time; an edge
    joins two images when either direction found ``edge_inliers`` inliers. At query time, the
    images verified with the query's own verified matches (two hops) are likely printings
    too, e.g. a tight crop. ``inliers``: sparse counts as computed (row verified against column).
    """

    edges: object
    inliers: object
    edge_inliers: int = EDGE_INLIERS

    @property
    def n(self) -> int:
        """Number of nodes (images)."""
        return int(self.edges.shape[0])

    def neighbours(self, i: int) -> np.ndarray:
        """Nodes joined to node ``i``."""
        e = self.edges
        return e.indices[e.indptr[i] : e.indptr[i + 1]]

    def hops(self, direct: Sequence[int], exclude: int | None = None) -> np.ndarray:
        """Nodes joined to a node of ``direct``, not in it themselves: the printings two verifications
        away. ``exclude``: a node whose edges are ignored (the query's own).
        """
        direct = np.asarray(direct, dtype=np.int64)
        src = direct if exclude is None else direct[direct != exclude]
        if not len(src):
            return np.zeros(0, dtype=np.int64)
        found = np.unique(np.concatenate([self.neighbours(int(v)) for v in src]))
        found = np.setdiff1d(found, direct)
        if exclude is not None:
            found = found[found != exclude]
        return found.astype(np.int64)


def graph_from_lists(
    indices: np.ndarray, inliers: np.ndarray, n: int, edge_inliers: int = EDGE_INLIERS
) -> VerificationGraph:
    """The verification graph of each image's candidates ``indices`` and their ``inliers``
    (``(N, K)``, ``-1`` pads or not verified).
    """

    indices, inliers = np.asarray(indices), np.asarray(inliers)
    if indices.shape != inliers.shape or indices.ndim != 2:
        raise InputError(f"indices {indices.shape} and inliers {inliers.shape} must match.")
    vr, vc = np.nonzero((inliers >= 0) & (indices >= 0))
    return graph_from_verified(vr, indices[vr, vc], inliers[vr, vc], n, edge_inliers)


def graph_from_verified(
    rows: np.ndarray,
    cols: np.ndarray,
    inliers: np.ndarray,
    n: int,
    edge_inliers: int = EDGE_INLIERS,
) -> VerificationGraph:
    """The verification graph of verified pairs: image ``rows[i]`` against ``cols[i]`` found
    ``inliers[i]`` inliers (e.g. gathered from shards, :mod:`cbir_utils.engine.graph_shards`)."""
    from scipy import sparse

    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    inliers = np.asarray(inliers, dtype=np.int64)
    e = (inliers >= edge_inliers) & (rows != cols)
    sym_r, sym_c = np.concatenate([rows[e], cols[e]]), np.concatenate([cols[e], rows[e]])
    edges = sparse.csr_matrix((np.ones(len(sym_r), dtype=bool), (sym_r, sym_c)), shape=(n, n))
    edges.sum_duplicates()
    stored = sparse.csr_matrix((inliers + 1, (rows, cols)), shape=(n, n))
    stored.data = stored.data - 1  # +1 above: zero-inlier verifications stay stored
    return VerificationGraph(edges.astype(bool), stored, int(edge_inliers))
