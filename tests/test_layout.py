"""The 2-D map of a collection: layouts keep neighbours together; thumbnails are drawn."""

from __future__ import annotations

import importlib.util

import matplotlib.pyplot as plt
import numpy as np
import pytest

from cbir_utils.evidence import layout
from cbir_utils.sources import data


@pytest.fixture()
def clusters(rng):
    """Three tight clusters of 8 unit vectors in 64-D, far apart."""
    centres = rng.normal(size=(3, 64))
    x = np.repeat(centres, 8, axis=0) + 0.05 * rng.normal(size=(24, 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(3), 8)


def _nearest_same_cluster(xy: np.ndarray, labels: np.ndarray) -> float:
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float((labels[d.argmin(1)] == labels).mean())


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_layout_keeps_clusters_together(clusters, method):
    x, labels = clusters
    lay = layout.embed_2d(x, method, seed=0, max_iter=300)
    assert lay.xy.shape == (24, 2) and lay.method == method and np.isfinite(lay.xy).all()
    assert _nearest_same_cluster(lay.xy, labels) == 1.0
    again = layout.embed_2d(x, method, seed=0, max_iter=300)
    np.testing.assert_allclose(again.xy, lay.xy, atol=1e-4)  # deterministic for a seed


def test_layout_errors(clusters):
    x, _ = clusters
    with pytest.raises(ValueError, match="Unknown layout"):
        layout.embed_2d(x, "mds")
    with pytest.raises(ValueError, match="at least 3"):
        layout.embed_2d(x[:2])
    with pytest.raises(ValueError, match="perplexity"):
        layout.embed_2d(x, perplexity=100)
    if importlib.util.find_spec("umap") is None:
        with pytest.raises(ValueError, match="umap-learn"):
            layout.embed_2d(x, "umap")


def test_collection_map(tiny_collection, tmp_path):
    col = data.load_collection(tiny_collection)
    n = len(col)
    xy = np.c_[np.arange(n), np.arange(n) % 5].astype(np.float32)
    fig = layout.collection_map(xy, col.paths, col.scenes, path=tmp_path / "map.png", thumb_px=24)
    thumbs = [a for a in fig.axes[0].artists if a.get_gid() == "thumb"]
    assert len(thumbs) == n
    assert len(fig.axes[0].get_legend().get_texts()) == 7  # one colour per scene
    colors = layout.scene_colors(col.scenes)
    assert len(set(colors.values())) == 7
    assert (tmp_path / "map.png").stat().st_size > 10_000
    plt.close(fig)
    fig = layout.collection_map(xy, col.paths, max_thumbs=5, thumb_px=16)
    assert len([a for a in fig.axes[0].artists if a.get_gid() == "thumb"]) == 5
    assert fig.axes[0].get_legend() is None  # no scenes, no legend
    plt.close(fig)
    with pytest.raises(ValueError, match="paths"):
        layout.collection_map(xy, col.paths[:3])
