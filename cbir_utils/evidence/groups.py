"""Duplicate groups: the printings of one scene gathered from unit-norm descriptors.

Two images are linked when their cosine reaches a threshold (chosen on validation images, or
given). Connected components chain unrelated photographs through a few borderline links,
so the default is **average linkage** cut at the threshold: groups merge while the mean
similarity of their cross pairs reaches it. It never merges across connected components,
so it runs exactly, component by component, from the sparse pairs above the threshold
(:func:`cbir_utils.engine.search.pairs_above`): nothing N x N is built. **Complete linkage**
gives smaller, purer groups; **mutual k-NN** is the last option.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from cbir_utils.config import GROUP_METHODS
from cbir_utils.engine import search
from cbir_utils.errors import InputError
from cbir_utils.io import save_csv
from cbir_utils.sources.provenance import add_columns

DEFAULT_METHOD = "average"
DEFAULT_K = 5
# Threshold used when none is given and no scene labels exist to choose one: the value
# chosen on the demo collection's validation images for the backbone's index descriptors
# (SSCD at 288 px: 0.47, which gives ARI 0.75 on the check collection, where its own
# validation images choose 0.52 and ARI 0.68; efficientnet_lite0 at 128 px: 0.65).
FALLBACK_THRESHOLDS = {"sscd": 0.47, "efficientnet_lite0": 0.65}
FALLBACK_THRESHOLD = FALLBACK_THRESHOLDS["sscd"]
"""The fallback of the default backbone; :func:`fallback_threshold` for the others."""


def fallback_threshold(backbone: str | None) -> float:
    """The no-labels linking threshold measured for ``backbone`` (the default's otherwise)."""
    return FALLBACK_THRESHOLDS.get(str(backbone), FALLBACK_THRESHOLD)


MAX_LINKAGE = 4000  # larger components are split at higher thresholds before linkage


# --------------------------------------------------------------------------- neighbours


def _check_desc(desc: np.ndarray) -> np.ndarray:
    x = np.asarray(desc, dtype=np.float32)
    if x.ndim != 2:
        raise InputError(f"Descriptors must be a 2-D array (N, D), got shape {x.shape}.")
    if len(x) and not np.isfinite(x).all():
        raise InputError("Descriptors contain NaN or infinite values.")
    return x


def _pairs_above(desc, threshold, progress):

    # below its exact-search size, ask for every pair (no cap on neighbours per image)
    small = len(desc) < search.EXACT_MAX
    i, j, s = search.pairs_above(
        desc, threshold, progress=progress, **({"k_max": None} if small else {})
    )
    return np.asarray(i), np.asarray(j), np.asarray(s)


def _knn(desc, k, progress):
    idx, val = search.knn(desc, k)
    return np.asarray(idx), np.asarray(val)


# --------------------------------------------------------------------------- clustering


@dataclass
class DuplicateGroups:
    """Duplicate groups: ``labels`` per image, groups numbered largest first (ties: the more
    cohesive), a singleton for an image without duplicates; ``centre_scores`` the cosine to the
    group's centre (1 for singletons).
    """

    labels: np.ndarray
    centre_scores: np.ndarray
    threshold: float
    method: str
    k: int | None = None

    @property
    def sizes(self) -> np.ndarray:
        """Images per group, in group order."""
        return np.bincount(self.labels, minlength=self.n_groups_total)

    @property
    def n_groups_total(self) -> int:
        """Number of groups, singletons included."""
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    @property
    def n_groups(self) -> int:
        """Number of groups with at least two images."""
        return int((self.sizes >= 2).sum())

    @property
    def n_singletons(self) -> int:
        """Images that have no duplicate."""
        return int((self.sizes == 1).sum())

    def members(self, group: int) -> np.ndarray:
        """Images of ``group``, closest to the centre first."""
        idx = np.flatnonzero(self.labels == group)
        return idx[np.argsort(-self.centre_scores[idx], kind="stable")]

    def groups(self, min_size: int = 2) -> list[np.ndarray]:
        """Members of each group with at least ``min_size`` images, in group order."""
        sizes = self.sizes
        return [self.members(g) for g in range(self.n_groups_total) if sizes[g] >= min_size]

    def table(
        self,
        names: Sequence[str],
        scenes: Sequence[str] | None = None,
        items: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """One row per image, ``group, image, score, size`` (and ``scene``), members closest to the
        centre first; with ``items``, each image's metadata too.
        """
        names = np.asarray([str(n) for n in names], dtype=object)
        if len(names) != len(self.labels):
            raise InputError(f"{len(names)} names for {len(self.labels)} images.")
        order = np.lexsort((-self.centre_scores, self.labels))
        sizes = self.sizes
        df = pd.DataFrame(
            {
                "group": self.labels[order],
                "image": names[order],
                "score": self.centre_scores[order].round(6),
                "size": sizes[self.labels[order]],
            }
        )
        if scenes is not None:
            df["scene"] = np.asarray(scenes, dtype=object)[order]
        if items is not None:
            df = add_columns(df, items, on="image")
        return df

    def save_csv(
        self,
        path,
        names: Sequence[str],
        scenes: Sequence[str] | None = None,
        min_size: int = 1,
        items: pd.DataFrame | None = None,
    ):
        """Write :meth:`table` (groups of at least ``min_size`` images) atomically as CSV."""
        df = self.table(names, scenes, items)
        return save_csv(path, df[df["size"] >= min_size])


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _linkage(x: np.ndarray, threshold: float, method: str = "average") -> np.ndarray:
    """Exact average- (or complete-) linkage labels of the rows of ``x``, cut at ``threshold``."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if len(x) <= 2:  # the pair (if any) is linked by construction
        return np.zeros(len(x), dtype=int)
    d = 1.0 - (x @ x.T).astype(np.float64)
    d = np.clip((d + d.T) / 2, 0.0, None)
    np.fill_diagonal(d, 0.0)
    z = linkage(squareform(d, checks=False), method=method)
    return fcluster(z, t=1.0 - threshold + 1e-9, criterion="distance") - 1


def _split_large(x: np.ndarray, members: np.ndarray, threshold: float) -> list[np.ndarray]:
    """Split a component too large for exact linkage by raising the threshold inside it.

    Pieces still too large once the threshold nears 1 (near-identical images) are kept whole.
    """
    pieces, todo, t = [], [members], threshold
    while todo:
        t = t + (1.0 - t) * 0.1
        if t > 1.0 - 1e-5:
            return pieces + todo
        nxt = []
        for m in todo:
            i, j, _ = _pairs_above(x[m], t, False)
            lab = _components(len(m), i, j)
            for c in np.unique(lab):
                part = m[lab == c]
                (nxt if len(part) > MAX_LINKAGE else pieces).append(part)
        todo = nxt
    return pieces


def _renumber(raw: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels renumbered largest group first, and each image's score to its group centre."""
    _, inv = np.unique(raw, return_inverse=True)
    g = int(inv.max()) + 1 if len(inv) else 0
    centres = np.zeros((g, x.shape[1]), dtype=np.float64)
    np.add.at(centres, inv, x)
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    scores = np.einsum("ij,ij->i", x.astype(np.float64), centres[inv])
    sizes = np.bincount(inv, minlength=g)
    cohesion = np.bincount(inv, weights=scores, minlength=g) / np.maximum(sizes, 1)
    first = np.full(g, len(inv))
    np.minimum.at(first, inv, np.arange(len(inv)))
    order = np.lexsort((first, -cohesion, -sizes))  # largest, then most cohesive, then earliest
    new = np.empty(g, dtype=int)
    new[order] = np.arange(g)
    scores = np.where(sizes[inv] == 1, 1.0, np.clip(scores, -1.0, 1.0))
    return new[inv], scores.astype(np.float32)


def duplicate_groups(
    desc: np.ndarray,
    threshold: float | None = None,
    method: str = DEFAULT_METHOD,
    k: int = DEFAULT_K,
    progress: bool = False,
) -> DuplicateGroups:
    """Group the images of unit-norm ``desc`` into printings of one scene.

    ``average`` (linkage cut at ``threshold``: resists chaining), ``complete`` (every pair of a
    group that similar), ``components`` (of the pairs above ``threshold``; chains) or
    ``mutual_knn`` (components of the mutual ``k``-NN graph, ``threshold`` optional).
    """
    if method not in GROUP_METHODS:
        raise InputError(
            f"Unknown grouping method {method!r}; choose one of {', '.join(GROUP_METHODS)}."
        )
    if threshold is None and method != "mutual_knn":
        raise InputError(f"Method {method!r} needs a threshold.")
    if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
        raise InputError(f"The threshold is a cosine similarity in [-1, 1], got {threshold!r}.")
    x = _check_desc(desc)
    n = len(x)
    if n == 0:
        empty = np.zeros(0, dtype=int)
        return DuplicateGroups(empty, np.zeros(0, np.float32), float(threshold or np.nan), method)

    if method == "mutual_knn":
        idx, val = _knn(x, k, progress)
        rows = np.repeat(np.arange(n), idx.shape[1])
        cols, sc = idx.ravel(), val.ravel()
        keep = sc >= threshold if threshold is not None else np.ones(len(sc), bool)
        a, b = rows[keep].astype(np.int64), cols[keep].astype(np.int64)
        mutual = np.isin(a * n + b, b * n + a) & (a < b)
        i, j = a[mutual], b[mutual]
        raw = _components(n, i, j)
    else:
        i, j, _ = _pairs_above(x, float(threshold), progress)
        raw = _components(n, i, j)
        if method in ("average", "complete"):
            raw = _linkage_within_components(x, raw, float(threshold), method, progress)
    labels, scores = _renumber(raw, x)
    return DuplicateGroups(
        labels=labels,
        centre_scores=scores,
        threshold=float(threshold) if threshold is not None else float("nan"),
        method=method,
        k=int(k) if method == "mutual_knn" else None,
    )


def _linkage_within_components(
    x: np.ndarray, comp: np.ndarray, threshold: float, method: str, progress: bool
) -> np.ndarray:
    out = np.arange(len(x))  # singletons keep their own label
    next_label = len(x)
    sizes = np.bincount(comp)
    big = np.flatnonzero(sizes >= 2)
    order = np.argsort(comp, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    split_warned = False
    for c in tqdm(big, desc=f"{method.title()} linkage", unit="component", disable=not progress):
        members = order[bounds[c] : bounds[c + 1]]
        parts = [members]
        if len(members) > MAX_LINKAGE:
            if not split_warned:
                warnings.warn(
                    f"A connected component has {len(members)} images (more than {MAX_LINKAGE}): "
                    "it is split at higher thresholds before average linkage; "
                    "a higher threshold avoids this.",
                    stacklevel=3,
                )
                split_warned = True
            parts = _split_large(x, members, threshold)
        for m in parts:
            too_big = len(m) > MAX_LINKAGE  # near-identical images only: one group
            lab = np.zeros(len(m), dtype=int) if too_big else _linkage(x[m], threshold, method)
            out[m] = lab + next_label
            next_label += int(lab.max()) + 1
    return out


# --------------------------------------------------------------------------- quality


@dataclass
class GroupQuality:
    """How well groups recover known scenes (labelled images only): ARI, NMI, purity (share of
    grouped images in their group's majority scene), scene recall (inverse purity), pairwise
    precision/recall/F1 and the scenes that form exactly one group.
    """

    ari: float
    nmi: float
    n_images: int
    n_scenes: int
    n_groups: int
    n_singletons: int
    purity: float
    scene_recall: float
    pair_precision: float
    pair_recall: float
    pair_f1: float
    exact_scenes: int

    def to_dict(self) -> dict:
        """JSON-serialisable dict."""
        return asdict(self)


def group_quality(labels: Sequence[int], scenes: Sequence[str]) -> GroupQuality:
    """Compare duplicate groups with scene labels (images with scene ``""`` are ignored)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix

    labels = np.asarray(labels)
    scenes = np.asarray(scenes, dtype=object)
    if len(labels) != len(scenes):
        raise InputError(f"{len(labels)} group labels for {len(scenes)} scene labels.")
    keep = scenes != ""
    labels, scenes = labels[keep], scenes[keep]
    if len(labels) == 0:
        raise InputError("No labelled image to compare the groups with.")
    cm = contingency_matrix(scenes, labels)  # scenes x groups
    g_size = cm.sum(axis=0)
    s_size = cm.sum(axis=1)
    multi = g_size >= 2
    in_multi = int(g_size[multi].sum())
    purity = float(cm[:, multi].max(axis=0).sum() / in_multi) if in_multi else float("nan")
    same_pairs = float((cm * (cm - 1) / 2).sum())
    group_pairs = float((g_size * (g_size - 1) / 2).sum())
    scene_pairs = float((s_size * (s_size - 1) / 2).sum())
    p = same_pairs / group_pairs if group_pairs else float("nan")
    r = same_pairs / scene_pairs if scene_pairs else float("nan")
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    exact = 0
    for row in range(cm.shape[0]):  # all of the scene in one group holding nothing else
        g = int(cm[row].argmax())
        exact += int(cm[row, g] == s_size[row] == g_size[g])
    return GroupQuality(
        ari=float(adjusted_rand_score(scenes, labels)),
        nmi=float(normalized_mutual_info_score(scenes, labels)),
        n_images=int(len(labels)),
        n_scenes=int(cm.shape[0]),
        n_groups=int(multi.sum()),
        n_singletons=int((g_size == 1).sum()),
        purity=purity,
        scene_recall=float(cm.max(axis=1).sum() / len(labels)),
        pair_precision=p,
        pair_recall=r,
        pair_f1=float(f1),
        exact_scenes=exact,
    )
