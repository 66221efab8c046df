"""A map of the collection: a 2-D layout of the descriptors drawn with thumbnails.

Nearby thumbnails have similar descriptors, so printings of one scene should sit together
(PixPlot-style). The layout is t-SNE from scikit-learn on cosine distances (after a PCA to
at most 50 dimensions); UMAP is used instead when ``method="umap"`` and ``umap-learn`` is
installed (it is not a dependency). Thumbnails are framed by scene colour where scene
labels exist.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cbir_utils.config import LAYOUTS
from cbir_utils.errors import InputError
from cbir_utils.io import save_figure
from cbir_utils.sources.data import load_image

PathLike = str | os.PathLike


@dataclass
class Layout:
    """2-D coordinates ``xy`` of a collection, the ``method`` actually used and its ``params``."""

    xy: np.ndarray
    method: str
    params: dict


def embed_2d(
    desc: np.ndarray,
    method: str = "tsne",
    seed: int = 0,
    perplexity: float | None = None,
    max_iter: int = 1000,
) -> Layout:
    """Lay out unit-norm descriptors in 2-D: ``tsne`` (cosine; perplexity default ``min(30,
    (N - 1) / 3)``), ``umap`` (needs ``umap-learn``) or ``pca`` (fast, for very large
    collections); deterministic for a seed. Needs 3 images or more.
    """
    if method not in LAYOUTS:
        raise InputError(f"Unknown layout {method!r}; choose one of {', '.join(LAYOUTS)}.")
    x = np.asarray(desc, dtype=np.float32)
    if x.ndim != 2 or len(x) < 3:
        raise InputError(f"A layout needs at least 3 descriptors (N, D), got shape {x.shape}.")
    from sklearn.decomposition import PCA

    n_comp = min(50, x.shape[1], len(x))
    reduced = PCA(n_components=n_comp, random_state=seed).fit_transform(x - x.mean(0))
    if method == "pca":
        return Layout(reduced[:, :2].astype(np.float32), "pca", {"seed": seed})
    if method == "umap":
        try:
            import umap  # type: ignore[import-not-found]
        except ImportError as err:
            raise InputError("method='umap' needs the umap-learn package; use 'tsne'.") from err
        n_nb = int(min(15, len(x) - 1))
        xy = umap.UMAP(n_neighbors=n_nb, metric="cosine", random_state=seed).fit_transform(reduced)
        return Layout(np.asarray(xy, np.float32), "umap", {"n_neighbors": n_nb, "seed": seed})
    from sklearn.manifold import TSNE

    perp = float(perplexity) if perplexity else float(min(30.0, (len(x) - 1) / 3.0))
    if not 0 < perp < len(x):
        raise InputError(f"perplexity must be in (0, {len(x)}), got {perp!r}.")
    tsne = TSNE(n_components=2, perplexity=perp, metric="cosine", init="pca", random_state=seed)
    # OpenMP threads slow small layouts down by 10x on a busy machine (measured: 267 images,
    # 28 s with the default threads vs 3 s with one, side by side on a shared 2-core CPU)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1 if len(x) < 5000 else None):
        xy = tsne.fit_transform(reduced)
    return Layout(np.asarray(xy, np.float32), "tsne", {"perplexity": perp, "seed": seed})


def scene_colors(scenes: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """A colour per labelled scene (a cycle of distinct hues); unlabelled images are grey."""
    import matplotlib

    names = sorted({str(s) for s in scenes if s})
    cmap = matplotlib.colormaps["tab20"]
    return {s: cmap(i % 20) for i, s in enumerate(names)}


def collection_map(
    layout: Layout | np.ndarray,
    paths: Sequence[PathLike],
    scenes: Sequence[str] | None = None,
    path: PathLike | None = None,
    thumb_px: int = 48,
    max_thumbs: int = 600,
    size: float = 14.0,
    title: str | None = None,
    seed: int = 0,
):
    """Draw the layout with a thumbnail at each image's place, framed in its scene's colour
    (grey unlabelled; a legend up to 20 scenes); past ``max_thumbs``, a random sample gets
    thumbnails and the rest are dots.
    """
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    xy = layout.xy if isinstance(layout, Layout) else np.asarray(layout, dtype=np.float32)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InputError(f"Coordinates must be (N, 2), got {xy.shape}.")
    if len(paths) != len(xy):
        raise InputError(f"{len(paths)} paths for {len(xy)} points.")
    if scenes is not None and len(scenes) != len(xy):
        raise InputError(f"{len(scenes)} scenes for {len(xy)} points.")
    colors = scene_colors(scenes) if scenes is not None else {}
    grey = (0.55, 0.55, 0.55, 1.0)
    point_colors = (
        [colors.get(str(s), grey) for s in scenes] if scenes is not None else [grey] * len(xy)
    )

    fig, ax = plt.subplots(figsize=(size, size))
    ax.scatter(xy[:, 0], xy[:, 1], s=8, c=point_colors, zorder=1)
    rng = np.random.default_rng(seed)
    chosen = (
        np.arange(len(xy))
        if len(xy) <= max_thumbs
        else rng.choice(len(xy), max_thumbs, replace=False)
    )
    zoom = 1.0
    for i in chosen:
        try:
            im = load_image(paths[i])
        except (OSError, ValueError):
            continue
        im.thumbnail((thumb_px, thumb_px))
        box = AnnotationBbox(
            OffsetImage(np.asarray(im), zoom=zoom),
            (float(xy[i, 0]), float(xy[i, 1])),
            frameon=True,
            pad=0.15,
            bboxprops={"edgecolor": point_colors[i], "linewidth": 2.0},
        )
        box.set_gid("thumb")
        ax.add_artist(box)
    pad = 0.06 * (np.ptp(xy, axis=0) + 1e-9)
    ax.set_xlim(xy[:, 0].min() - pad[0], xy[:, 0].max() + pad[0])
    ax.set_ylim(xy[:, 1].min() - pad[1], xy[:, 1].max() + pad[1])
    ax.set_xticks([])
    ax.set_yticks([])
    method = layout.method if isinstance(layout, Layout) else "2-D layout"
    n_scenes = len(colors)
    sub = f"{len(xy)} images" + (f", {n_scenes} scenes (frame colour = scene)" if n_scenes else "")
    ax.set_title(title or f"Map of the collection ({method}; {sub})", fontsize=12)
    if 0 < n_scenes <= 20:
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(color=c, label=s) for s, c in colors.items()],
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            fontsize=8,
            frameon=False,
        )
    fig.tight_layout()
    if path is not None:
        save_figure(path, fig)
    return fig
