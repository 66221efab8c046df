"""The end-to-end pipeline (descriptors, post-processing, verification graph, evaluation)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import source_photo
from PIL import Image

from cbir_utils import data, models, pipeline, retrieval
from cbir_utils import verify as V
from cbir_utils.demo import halftone


@pytest.fixture(scope="module")
def coll_split(tiny_collection):
    coll = data.load_collection(tiny_collection)
    return coll, data.make_split(coll.items, seed=0, heldout_frac=0.3)


def test_plain_config_matches_retrieval_evaluate_protocols(lite0, coll_split):
    coll, split = coll_split
    cfg = pipeline.PipelineConfig(image_size=64)
    meta = models.model_meta("efficientnet_lite0", "imagenet", "avg", 64)
    desc = pipeline.describe(lite0, meta, coll.paths, cfg, progress=False)
    ranked = pipeline.rank_collection(desc, coll.paths, cfg, progress=False)
    assert np.allclose(ranked.scores, desc @ desc.T, atol=1e-5)
    assert np.allclose(ranked.descriptors, desc, atol=1e-6)
    mine = pipeline.evaluate_scores(ranked.scores, split, ks=(1, 5))
    ref = retrieval.evaluate_protocols(desc, split, ks=(1, 5))
    assert set(mine) == set(ref)
    for p in ref:
        a, b = mine[p].to_dict(), ref[p].to_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-4), (p, k)


def test_rerank_and_graph_only_raise_scores(lite0, coll_split, tmp_path):
    coll, split = coll_split
    cfg = pipeline.PipelineConfig(
        image_size=64, whiten_dim=8, qe_k=1, dba_k=1, rerank=True, rerank_top_n=6, graph=True
    )
    meta = models.model_meta("efficientnet_lite0", "imagenet", "avg", 64)
    desc = pipeline.describe(lite0, meta, coll.paths, cfg, cache_dir=tmp_path, progress=False)
    ranked = pipeline.rank_collection(desc, coll.paths, cfg, progress=False)
    n = len(coll)
    off = ~np.eye(n, dtype=bool)
    assert ranked.whitening is not None and ranked.whitening.dim == 8
    assert ranked.descriptors.shape == (n, 8)
    assert (ranked.scores[off] >= ranked.cosine[off] - 1e-9).all()
    assert ((ranked.inliers >= 0).sum(1) == 6).all()  # top 6 verified per image
    assert ranked.graph is not None and ranked.graph.n == n
    evals = pipeline.evaluate_scores(ranked.scores, split, protocols=("disjoint",))
    assert 0.0 <= evals["disjoint"].ranking.map <= 1.0


def test_config_validation():
    with pytest.raises(ValueError, match="graph"):
        pipeline.PipelineConfig(graph=True)
    with pytest.raises(ValueError, match="scales"):
        pipeline.PipelineConfig(scales=(0.0,))
    cfg = pipeline.PipelineConfig(scales=[1, 0.5])
    assert cfg.scales == (1.0, 0.5) and cfg.to_dict()["scales"] == [1.0, 0.5]


def test_two_hop_finds_a_printing_the_query_does_not_share(tmp_path):
    """q (left part) verifies w (whole photo), w verifies r (right part); q and r share
    nothing, yet the graph brings r up for q."""
    photo = source_photo("china").convert("L").resize((640, 427))
    w_, h_ = photo.size
    parts = {
        "whole": photo,
        "left": photo.crop((0, 0, int(0.45 * w_), h_)),
        "right": photo.crop((int(0.55 * w_), 0, w_, h_)),
    }
    paths = {}
    for name, im in parts.items():
        im = Image.fromarray(halftone(np.asarray(im), 45.0, 3.0)) if name != "whole" else im
        paths[name] = tmp_path / f"{name}.png"
        im.save(paths[name])
    others = []
    for name in ("coffee", "chelsea", "rocket"):
        p = tmp_path / f"{name}.png"
        source_photo(name).convert("L").save(p)
        others.append(p)
    db = [paths["whole"], paths["right"], *others]
    store = V.LocalFeatureStore()
    scores_db = np.full((len(db), len(db)), 0.5)
    graph = V.verification_graph(scores_db, db, top_n=len(db), store=store, progress=False)
    assert 1 in graph.neighbours(0) and 0 in graph.neighbours(1)  # whole <-> right
    s = np.array([0.5, 0.1, 0.4, 0.3, 0.2])  # "right" ranked last by the descriptor
    plain = V.rerank(paths["left"], db, s, top_n=len(db), store=store)
    assert plain.inliers[0] >= V.EDGE_INLIERS and plain.inliers[1] < V.MIN_INLIERS
    hop = V.rerank(paths["left"], db, s, top_n=len(db), store=store, graph=graph, hop_weight=0.5)
    assert list(hop.order[:2]) == [0, 1]
    assert hop.scores[1] == pytest.approx(0.1 + 0.5)
    # the query's own node is ignored: with "whole" as the query's node, nothing hops
    none = graph.two_hop(np.array([True, False, False, False, False]), exclude=0)
    assert not none.any()
