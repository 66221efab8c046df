"""The end-to-end pipeline (descriptors, post-processing, verification graph, evaluation)."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import numpy as np
import pytest
from conftest import source_photo
from PIL import Image

from cbir_utils.config import PipelineConfig, config_from_params
from cbir_utils.engine import descriptors as D
from cbir_utils.engine import index, models, pipeline
from cbir_utils.engine import verify as V
from cbir_utils.evaluation import retrieval
from cbir_utils.sources import data
from cbir_utils.sources.demo import halftone


@pytest.fixture(scope="module")
def coll_split(tiny_collection):
    coll = data.load_collection(tiny_collection)
    return coll, data.make_split(coll.items, seed=0, heldout_frac=0.3)


def _dense(ranking, n: int, which: str = "scores") -> np.ndarray:
    """A ranking's lists as an ``(N, n)`` matrix (``-inf``, ``-1`` for inliers, off the lists)."""
    vals = getattr(ranking, which)
    out = np.full((len(ranking.indices), n), -1 if which == "inliers" else -np.inf, vals.dtype)
    r, c = np.nonzero(ranking.indices >= 0)
    out[r, ranking.indices[r, c]] = vals[r, c]
    return out


def _dense_evaluation(scores: np.ndarray, split) -> dict:
    """mAP, pairwise F1 and the threshold of a full score matrix, by the metrics' matrix API."""
    from cbir_utils.evaluation import metrics as M

    scenes = split["scene"].to_numpy(dtype=object)
    n = len(scenes)

    def cells(q):
        rel = (scenes[q][:, None] == scenes[None, :]) & (scenes[q][:, None] != "")
        mask = np.ones((len(q), n), bool)
        mask[np.arange(len(q)), q] = False
        return scores[q], rel, mask

    threshold = M.best_threshold(*cells(retrieval.protocol_queries(split, "val")))
    out = {}
    for p in ("all", "study", "disjoint"):
        q = retrieval.protocol_queries(split, p)
        S, rel, mask = cells(q)
        out[p] = (M.retrieval_metrics(S, rel, mask).map, M.pairwise_prf(S, rel, threshold, mask).f1,
                  M.micro_ap(S, rel, mask), threshold)  # fmt: skip
    return out


def test_plain_config_matches_retrieval_evaluate_protocols(lite0, coll_split):
    coll, split = coll_split
    cfg = PipelineConfig.baseline(image_size=64)
    meta = models.model_meta("efficientnet_lite0", "imagenet", "avg", 64)
    desc = pipeline.describe(lite0, meta, coll.paths, cfg, progress=False)
    ranked = pipeline.rank_collection(desc, coll.paths, cfg, progress=False)
    off = ~np.eye(len(desc), dtype=bool)
    scores = _dense(ranked.ranking, len(desc))
    assert np.allclose(scores[off], (desc @ desc.T)[off], atol=1e-5)
    assert np.isneginf(np.diag(scores)).all()  # the query itself is not a result
    assert np.allclose(ranked.descriptors, desc, atol=1e-6)
    mine = retrieval.evaluate_collection(ranked, split, ks=(1, 5))
    ref = retrieval.evaluate_protocols(desc, split, ks=(1, 5))
    assert set(mine) == set(ref)
    for p in ref:
        a, b = mine[p].to_dict(), ref[p].to_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-4), (p, k)


def test_rerank_and_graph_only_raise_scores(lite0, coll_split, tmp_path):
    coll, split = coll_split
    cfg = PipelineConfig.baseline(
        image_size=64, whiten_dim=8, qe_k=1, dba_k=1, rerank=True, rerank_top_n=6, graph=True
    )
    meta = models.model_meta("efficientnet_lite0", "imagenet", "avg", 64)
    desc = pipeline.describe(lite0, meta, coll.paths, cfg, cache_dir=tmp_path, progress=False)
    ranked = pipeline.rank_collection(desc, coll.paths, cfg, progress=False)
    n = len(coll)
    off = ~np.eye(n, dtype=bool)
    assert ranked.whitening is not None and ranked.whitening.dim == 8
    assert ranked.descriptors.shape == (n, 8)
    r = ranked.ranking
    assert (_dense(r, n)[off] >= _dense(r, n, "cosine")[off] - 1e-9).all()
    assert ((_dense(r, n, "inliers") >= 0).sum(1) == 6).all()  # top 6 verified per image
    assert ranked.graph is not None and ranked.graph.n == n
    evals = retrieval.evaluate_collection(ranked, split, protocols=("disjoint",))
    assert 0.0 <= evals["disjoint"].ranking.map <= 1.0


def test_config_validation():
    with pytest.raises(ValueError, match="graph"):
        PipelineConfig.baseline(graph=True)
    with pytest.raises(ValueError, match="scales"):
        PipelineConfig.baseline(scales=(0.0,))
    cfg = PipelineConfig.baseline(scales=[1, 0.5])
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
    lists, inl = [], []
    for i in range(len(db)):  # every image verified against all the others
        others = [j for j in range(len(db)) if j != i]
        res = V.rerank(str(db[i]), [db[j] for j in others], np.full(len(others), 0.5),
                       top_n=len(others), store=store)  # fmt: skip
        lists.append(others)
        inl.append(res.inliers)
    graph = V.graph_from_lists(np.array(lists), np.array(inl), len(db))
    assert 1 in graph.neighbours(0) and 0 in graph.neighbours(1)  # whole <-> right
    s = np.array([0.5, 0.1, 0.4, 0.3, 0.2])  # "right" ranked last by the descriptor
    plain = V.rerank(paths["left"], db, s, top_n=len(db), store=store)
    assert plain.inliers[0] >= V.EDGE_INLIERS and plain.inliers[1] < V.MIN_INLIERS
    # "right" is two verifications away from the query: the pipeline's hop bonus goes to it
    assert graph.hops(np.flatnonzero(plain.inliers >= graph.edge_inliers)).tolist() == [1]
    # the query's own node is ignored: with "whole" as the query's node, nothing hops
    assert len(graph.hops([0], exclude=0)) == 0


def _notebook_defaults(name: str) -> dict:
    from cbir_utils.runs import notebook_defaults

    return notebook_defaults(name)


def _profile(name: str) -> dict:
    import yaml

    from cbir_utils.paths import NOTEBOOKS_DIR

    return yaml.safe_load((NOTEBOOKS_DIR / "params" / f"{name}.yaml").read_text())


def _quality():
    import sys

    from cbir_utils.paths import PROJECT_ROOT

    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    import quality

    return quality


def test_notebook_defaults_are_the_benchmarks_best_pipeline():
    """Notebooks 01 and 03 default to the pipeline's every step but the verification graph (an
    option: no gain measured), with the backbone, input
    size and descreening benchmarks/quality.py's ``backbones`` command picked on validation."""
    quality = _quality()
    backbone, size, descreen = quality.DEFAULT_BACKBONE
    best = quality.default_pipeline(backbone, size, descreen)
    assert best == PipelineConfig.baseline(
        image_size=size, descreen=descreen, scales=(1.0,), whiten_dim=64,
        dba_k=1, qe_k=1, rerank=True, graph=False,
    )  # fmt: skip
    assert best == PipelineConfig()  # its defaults, which the CLI's and the index's take
    from cbir_utils import runs

    nb01 = runs.check_params(_notebook_defaults("01_pretrained_retrieval"), check_paths=False)
    assert config_from_params(nb01) == best
    assert nb01["BACKBONE"] == backbone
    nb03 = runs.check_params(_notebook_defaults("03_finetuned_retrieval"), check_paths=False)
    ckpt_meta = {"image_size": size, "resize": "letterbox", "grayscale": True, "pooling": "gem"}
    assert config_from_params(nb03, ckpt_meta) == replace(best, pooling="gem")


def test_backbone_pick_uses_validation_then_micro_ap_then_speed():
    """``choose_backbone`` never looks at the held-out scenes or the check collection."""
    import pandas as pd

    quality = _quality()
    rows = [  # (collection, backbone, size, val_mAP, val_muAP, s/img, disjoint mAP)
        ("demo", "a", 224, 1.0, 0.99, 0.05, 0.50),
        ("demo", "b", 288, 1.0, 0.999, 0.10, 0.40),
        ("demo", "c", 160, 0.99, 1.0, 0.01, 0.99),  # best held-out, lower validation
        ("check", "d", 224, 1.0, 1.0, 0.001, 1.0),  # another collection: never picked
    ]
    table = pd.DataFrame(
        [
            dict(collection=c, backbone=b, image_size=s, descreen=3.0, model="pretrained",
                 protocol="disjoint", val_mAP=v, val_muAP=u, s_per_image=t, mAP=m)
            for c, b, s, v, u, t, m in rows
        ]
    )  # fmt: skip
    assert quality.choose_backbone(table) == ("b", 288, 3.0)
    table.loc[1, "val_muAP"] = 0.99  # tie on both: the faster one
    assert quality.choose_backbone(table) == ("a", 224, 3.0)


def test_paper_profile_is_the_studys_method():
    """The paper profile switches every added step off: plain cosine, the study's recipe."""
    from cbir_utils import runs
    from cbir_utils.learning import training

    for nb in ("01_pretrained_retrieval", "03_finetuned_retrieval"):
        params = runs.check_params(
            {**_notebook_defaults(nb), **_profile("paper")}, check_paths=False
        )
        cfg = config_from_params(params)
        assert cfg == PipelineConfig.baseline(image_size=224, resize="center_crop")
    p02 = runs.check_params(
        {**_notebook_defaults("02_finetune_classification"), **_profile("paper")},
        check_paths=False,
    )
    study = dict(
        BACKBONE="resnet152", WEIGHTS="imagenet", POOLING="avg", IMAGE_SIZE=224,
        RESIZE="center_crop", GRAYSCALE=True, DESCREEN=0.0, LR=0.001, BATCH_SIZE=32,
        AUGMENT="none", HEAD_LR=None,  # one learning rate, as the study
    )  # fmt: skip
    assert {k: p02[k] for k in study} == study
    assert tuple(p02["STAGES"]) == (30, 50, 50)
    # TrainConfig's defaults are notebook 02's own, field by field
    nb = runs.check_params(_notebook_defaults("02_finetune_classification"), check_paths=False)
    cfg = training.TrainConfig()
    for f in dataclasses.fields(cfg):
        if f.name.upper() in nb:
            assert nb[f.name.upper()] == getattr(cfg, f.name) or (
                f.name == "stages" and tuple(nb["STAGES"]) == cfg.stages
            ), f.name


def test_fast_profile_is_the_defaults_with_sscds_student():
    from cbir_utils import runs

    params = runs.check_params(
        {**_notebook_defaults("01_pretrained_retrieval"), **_profile("fast")}, check_paths=False
    )
    assert config_from_params(params) == PipelineConfig()
    assert params["BACKBONE"] == "sscd_distilled"


def test_config_from_params_takes_the_network_from_the_checkpoint():
    meta = {"image_size": 96, "resize": "center_crop", "grayscale": False, "pooling": "gem"}
    cfg = config_from_params({"IMAGE_SIZE": 128, "DESCREEN": 2.0, "RERANK": True}, meta)
    assert (cfg.image_size, cfg.resize, cfg.grayscale, cfg.pooling) == (
        96,
        "center_crop",
        False,
        "gem",
    )
    assert cfg.descreen == 2.0 and cfg.rerank
    with pytest.raises(ValueError, match="graph"):
        config_from_params({"RERANK": False, "GRAPH": True})


def test_notebook_02_defaults_are_the_benchmarks_recipe():
    """Notebook 02's defaults are the benchmark's recipe for the default backbone
    (``finetune_recipe``: reprint augmentation, the study's schedule) and TrainConfig's."""
    from cbir_utils import runs
    from cbir_utils.learning import training

    quality = _quality()

    p = runs.check_params(_notebook_defaults("02_finetune_classification"), check_paths=False)
    nb = training.TrainConfig(
        backbone=p["BACKBONE"], weights=p["WEIGHTS"], pooling=p["POOLING"],
        image_size=p["IMAGE_SIZE"], resize=p["RESIZE"], grayscale=p["GRAYSCALE"],
        descreen=p["DESCREEN"], lr=p["LR"], batch_size=p["BATCH_SIZE"], stages=p["STAGES"],
        augment=p["AUGMENT"], seed=p["SEED"], head_lr=p["HEAD_LR"],
    )  # fmt: skip
    bench = quality.finetune_recipe(*quality.DEFAULT_BACKBONE)
    assert p["HEAD_LR"] is None and (p["LR"], tuple(p["STAGES"])) == (0.001, (30, 50, 50))
    assert nb.to_dict() == bench.to_dict() == training.TrainConfig().to_dict()


# --------------------------------------------------------------------------- sparse = dense


def _dense_reference(desc, paths, cfg, store):
    """The pipeline written with (N, N) matrices, as it was before the top-k lists: the
    reference the sparse ranking must equal (dense is fine in a test, never in the library)."""
    post = pipeline.post_processing(cfg)
    n = len(desc)
    w = (
        D.fit_whitening(desc, post.whiten_dim, shrinkage=post.whiten_shrinkage)
        if post.whiten
        else None
    )
    white = w.apply(desc) if w is not None else D.l2n(desc)

    def nmean(x, db, k, alpha, exclude):
        s = x @ db.T
        s[np.arange(len(x)), exclude] = -np.inf
        nb = np.argsort(-s, axis=1, kind="stable")[:, :k]
        wt = np.clip(np.take_along_axis(s, nb, 1), 0, None) ** alpha
        return D.l2n(x + np.einsum("nk,nkd->nd", wt, db[nb]))

    rows = np.arange(n)
    db = nmean(white, white, post.dba_k, post.dba_alpha, rows) if post.dba_k else white
    q = nmean(db, db, post.qe_k, post.qe_alpha, rows) if post.qe_k else db
    cos = (q @ db.T).astype(np.float64)
    np.fill_diagonal(cos, -np.inf)
    scores, inl = cos.copy(), np.full((n, n), -1)
    for i in range(n):
        res = V.rerank(
            str(paths[i]), paths, cos[i], cfg.rerank_top_n, cfg.rerank_weight, store=store
        )
        scores[i], inl[i] = res.scores, res.inliers
    strong = inl >= V.EDGE_INLIERS
    strong = (strong | strong.T) & ~np.eye(n, dtype=bool)
    for i in range(n):
        direct = inl[i] >= V.EDGE_INLIERS
        hop = np.zeros(n, bool)
        for v in np.flatnonzero(direct):
            if v != i:
                hop |= strong[v]
        hop &= ~direct
        hop[i] = False
        scores[i, hop] += cfg.hop_weight
    return scores, cos, inl


def test_sparse_ranking_equals_the_dense_one(coll_split):
    coll, split = coll_split
    model = models.build_model("sscd_distilled", "default")
    meta = models.model_meta("sscd_distilled", "default", "avg", 128)
    cfg = PipelineConfig.baseline(image_size=128, scales=(0.75, 1.0), whiten_dim=8, dba_k=1,
                                  qe_k=1, rerank=True, rerank_top_n=5, graph=True)  # fmt: skip
    desc = pipeline.describe(model, meta, coll.paths, cfg, progress=False)
    store = V.LocalFeatureStore()
    ref_scores, ref_cos, ref_inl = _dense_reference(desc, coll.paths, cfg, store)
    ranked = pipeline.rank_collection(desc, coll.paths, cfg, store, progress=False)
    n = len(coll)
    off = ~np.eye(n, dtype=bool)
    r = ranked.ranking
    assert np.allclose(_dense(r, n, "cosine")[off], ref_cos[off], atol=1e-6)
    assert np.array_equal(_dense(r, n, "inliers")[off], ref_inl[off])
    assert np.allclose(_dense(r, n)[off], ref_scores[off], atol=1e-6)
    assert ranked.graph.edges.nnz > 0  # the graph is used: some two-hop bonus exists
    # the evaluation of the ranked lists is that of the full score matrix
    mine = retrieval.evaluate_collection(ranked, split)
    ref = _dense_evaluation(np.where(off, ref_scores, -np.inf), split)
    for p, (m_ap, f1, mu_ap, threshold) in ref.items():
        assert mine[p].ranking.map == pytest.approx(m_ap, abs=1e-9)
        assert mine[p].ranking.mu_ap == pytest.approx(mu_ap, abs=1e-9)
        assert mine[p].pairwise.f1 == pytest.approx(f1, abs=1e-9)
        assert mine[p].pairwise.threshold == pytest.approx(threshold, abs=1e-9)
    # short lists are the heads of the full ones
    fitted = ranked.fitted
    top3 = fitted.rank_collection(3, store, progress=False)
    full = fitted.rank_collection(None, store, progress=False)
    assert np.array_equal(top3.indices, full.indices[:, :3])
    # a collection image given as a new query (its row excluded) gets its own list, and so
    # does its region (a crop is embedded and verified like any new image)
    q = [2, 11]
    again = fitted.rank(desc[q], [coll.paths[i] for i in q], len(coll) - 1, exclude=q, store=store)
    assert np.array_equal(again.indices, full.indices[q])
    assert np.allclose(again.scores, full.scores[q])
    # new images (regions of two printings) ranked one after the other: each is verified as
    # a new image; none takes the collection's path (nothing of theirs enters the store)
    crops = [data.load_image(coll.paths[i]).crop((0, 0, 100, 100)) for i in q]
    before = len(store)
    fitted.rank(desc[q], crops, 5, exclude=[-1, -1], store=store, progress=False)
    assert len(store) == before
    # with k at or above N a new image's list is the whole collection, each image once
    for k in (n, n + 5):
        every = fitted.rank(desc[q], crops, k, exclude=[-1, -1], store=store, progress=False)
        assert [sorted(row) for row in every.indices.tolist()] == [list(range(n))] * 2
    # saved and loaded with an index folder: the same ranking
    folder = coll.root.parent / "fitted"
    folder.mkdir(exist_ok=True)
    fitted.save(folder)
    loaded = pipeline.FittedPipeline.load(folder, coll.paths)
    back = loaded.rank(desc[q], [coll.paths[i] for i in q], 5, exclude=q, store=store)
    assert np.array_equal(back.indices, full.indices[q, :5])


def test_large_collection_path_hnsw_and_whitening_sample(monkeypatch):
    """What a large collection takes (HNSW neighbours for αDBA/αQE and the top-k, whitening
    on a sample) ranks like the exact path."""
    from cbir_utils.engine import search

    _quality()  # puts benchmarks/ on the path
    from synthetic import synthetic_vectors

    x = synthetic_vectors(3000, 64, "clustered", seed=1)
    q = synthetic_vectors(40, 64, "clustered", seed=2)
    paths = [f"x{i}.jpg" for i in range(len(x))]
    cfg = PipelineConfig.baseline(whiten_dim=32, dba_k=1, qe_k=1)
    exact = pipeline.FittedPipeline.fit(x, paths, cfg, method="exact")
    monkeypatch.setattr(search, "EXACT_MAX", 100)
    approx = pipeline.FittedPipeline.fit(x, paths, cfg, method="auto")
    a = approx.rank(q, [None] * len(q), 10).indices
    assert approx._search_white is not None and approx._search.method == "hnsw"
    e = exact.rank(q, [None] * len(q), 10).indices
    overlap = np.mean([len(np.intersect1d(r, s)) / 10 for r, s in zip(a, e)])
    assert overlap >= 0.9, overlap
    # above WHITEN_SAMPLE images the whitening is learned on a fixed sample
    monkeypatch.setattr(pipeline, "WHITEN_SAMPLE", 1000)
    sampled = pipeline.FittedPipeline.fit(x, paths, cfg, method="exact")
    again = pipeline.FittedPipeline.fit(x, paths, cfg, method="exact")
    assert sampled.whitening.dim == 32
    assert not np.allclose(sampled.whitening.mean, exact.whitening.mean)
    np.testing.assert_array_equal(sampled.whitening.projection, again.whitening.projection)


def test_indexing_check_fails_under_the_peers_throughput():
    """``indexing.py --check``: cbir index must be at least as fast as immaculate's SSCD."""
    _quality()  # puts benchmarks/ on the path
    import indexing

    assert indexing.check(1.0) == "" and indexing.check(1.3) == ""
    assert "0.27" in indexing.check(0.27)
    assert "not measured" in indexing.check(None)


def test_a_pipeline_saved_before_whitening_shrinkage_keeps_the_shrinkage_it_was_made_with():
    saved = PipelineConfig().to_dict()
    del saved["whiten_shrinkage"]  # as an index's header written before the setting
    assert PipelineConfig.from_dict(saved).whiten_shrinkage == 0.1
    assert PipelineConfig().whiten_shrinkage == 0.7
    again = PipelineConfig(whiten_shrinkage=0.3).to_dict()
    assert PipelineConfig.from_dict(again).whiten_shrinkage == 0.3
    # a new index's pipeline has today's defaults, not those of configurations saved before
    meta = models.model_meta("sscd", "default", "avg", 288)
    fresh, default = index.pipeline_config(meta), PipelineConfig()
    assert (fresh.whiten_dim, fresh.whiten_shrinkage) == (default.whiten_dim, 0.7)
    assert index.pipeline_config(meta, scales=[1.0]).scales == (1.0,)


def test_photographs_found_on_pages_are_whitened_with_their_own_dimensions():
    """With ``pages`` the whitening keeps ``page_whiten_dim`` dimensions, else ``whiten_dim``;
    the index's saved pipeline says which (an older one, without ``pages``, is not pages)."""
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(40, 32)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    paths = [f"page{i // 4}.jpg#xywh=0,0,10,10" for i in range(40)]
    for pages, dim in ((False, 6), (True, 12)):
        cfg = PipelineConfig.baseline(whiten_dim=6, page_whiten_dim=12, pages=pages)
        ranked = pipeline.rank_collection(desc, paths, cfg, progress=False)
        assert ranked.whitening.dim == dim and ranked.descriptors.shape == (40, dim)
    saved = PipelineConfig(pages=True).to_dict()
    assert PipelineConfig.from_dict(saved).whitening_dims == 128
    del saved["pages"], saved["page_whiten_dim"]
    assert PipelineConfig.from_dict(saved).whitening_dims == PipelineConfig.whiten_dim == 64
    with pytest.raises(ValueError, match="page_whiten_dim"):
        PipelineConfig(page_whiten_dim=-1)
