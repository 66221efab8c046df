"""Duplicate groups: neighbour search, clustering without chaining, quality figures, CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cbir_utils.engine import features, models
from cbir_utils.evaluation import retrieval
from cbir_utils.evidence import groups
from cbir_utils.sources import data


def unit_angles(degrees) -> np.ndarray:
    """2-D unit vectors at the given angles (their cosines are easy to compute by hand)."""
    r = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.c_[np.cos(r), np.sin(r)].astype(np.float32)


# Two tight scenes (0-4 degrees, 40-44 degrees) and one image half-way between them that is
# within 18 degrees of one image of each: a single link to each side.
CHAIN = unit_angles([0, 2, 4, 22, 40, 42, 44])
CHAIN_TRUTH = ["a", "a", "a", "bridge", "b", "b", "b"]
CHAIN_T = float(np.cos(np.deg2rad(19)))  # links angles up to 19 degrees apart


def test_components_chain_but_average_linkage_does_not():
    comp = groups.duplicate_groups(CHAIN, CHAIN_T, method="components")
    assert comp.n_groups == 1 and comp.sizes.tolist() == [7]
    avg = groups.duplicate_groups(CHAIN, CHAIN_T, method="average")
    # the bridge's mean similarity to either side (angles 18, 20, 22) is below cos 19
    assert sorted(avg.sizes.tolist()) == [1, 3, 3]
    assert avg.labels[0] == avg.labels[1] == avg.labels[2] != avg.labels[4]
    assert avg.labels[4] == avg.labels[5] == avg.labels[6]
    assert groups.group_quality(avg.labels, CHAIN_TRUTH).ari == pytest.approx(1.0)
    assert groups.group_quality(comp.labels, CHAIN_TRUTH).ari == pytest.approx(0.0)
    # complete linkage: every pair of a group within 19 degrees (0 and 22 are not)
    full = groups.duplicate_groups(CHAIN, CHAIN_T, method="complete")
    np.testing.assert_array_equal(full.labels, avg.labels)
    wide = float(np.cos(np.deg2rad(21)))  # average links the bridge to one side, complete not
    assert sorted(groups.duplicate_groups(CHAIN, wide).sizes.tolist()) == [3, 4]
    assert sorted(groups.duplicate_groups(CHAIN, wide, "complete").sizes.tolist()) == [1, 3, 3]


def test_mutual_knn():
    g = groups.duplicate_groups(CHAIN, method="mutual_knn", k=2)
    # each scene's images are each other's two nearest; the bridge is nobody's
    assert g.labels[0] == g.labels[1] == g.labels[2]
    assert g.labels[4] == g.labels[5] == g.labels[6] != g.labels[0]
    assert g.sizes[g.labels[3]] == 1 and np.isnan(g.threshold) and g.k == 2
    # a threshold above every link leaves only singletons
    assert groups.duplicate_groups(CHAIN, 0.99999, method="mutual_knn", k=2).n_groups == 0


def test_group_order_centre_scores_and_table():
    # a pair 60 degrees apart, a triple at 150-154 and a lone image at 250 degrees
    x = unit_angles([0, 60, 150, 152, 154, 250])
    g = groups.duplicate_groups(x, float(np.cos(np.deg2rad(61))))
    assert g.sizes.tolist() == [3, 2, 1]  # largest group first
    assert (g.n_groups, g.n_singletons, g.n_groups_total) == (2, 1, 3)
    # two unit vectors theta apart are cos(theta/2) from their normalised mean
    assert g.centre_scores[0] == pytest.approx(np.cos(np.deg2rad(30)), abs=1e-6)
    assert g.centre_scores[3] == pytest.approx(1.0, abs=1e-6)  # middle of the triple
    assert g.centre_scores[5] == 1.0  # singleton
    assert g.members(0).tolist()[0] == 3  # closest to the centre first
    table = g.table([f"img{i}.jpg" for i in range(6)], ["t", "p", "t", "t", "t", ""])
    assert list(table.columns) == ["group", "image", "score", "size", "scene"]
    assert table["group"].tolist() == [0, 0, 0, 1, 1, 2]
    assert table["image"].iloc[0] == "img3.jpg"
    assert [len(m) for m in g.groups()] == [3, 2]
    assert [len(m) for m in g.groups(min_size=1)] == [3, 2, 1]
    with pytest.raises(ValueError, match="names"):
        g.table(["a"])


def test_save_csv(tmp_path):
    g = groups.duplicate_groups(CHAIN, CHAIN_T)
    names = [f"p{i}.tif" for i in range(7)]
    g.save_csv(tmp_path / "groups.csv", names, CHAIN_TRUTH, min_size=2)
    df = pd.read_csv(tmp_path / "groups.csv", keep_default_na=False)
    assert len(df) == 6 and "p3.tif" not in set(df["image"])  # the singleton is left out
    assert set(df.groupby("group")["scene"].nunique()) == {1}
    assert ((df["score"] > 0.99) & (df["score"] <= 1.0)).all()


def test_group_quality_by_hand():
    q = groups.group_quality([0, 0, 1, 1, 2], ["a", "a", "a", "b", "b"])
    # groups of 2+: {a, a} and {a, b}: 3 of their 4 images belong to the majority scene
    assert q.purity == pytest.approx(3 / 4)
    # same-group pairs: (0,1) same scene, (2,3) not -> 1/2; same-scene pairs: 3 + 1 -> 1/4
    assert q.pair_precision == pytest.approx(1 / 2)
    assert q.pair_recall == pytest.approx(1 / 4)
    assert q.pair_f1 == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert (q.n_images, q.n_scenes, q.n_groups, q.n_singletons) == (5, 2, 2, 1)
    assert q.scene_recall == pytest.approx((2 + 1) / 5)  # a: 2 of 3 together, b: 1 of 2
    assert q.exact_scenes == 0
    perfect = groups.group_quality([3, 3, 7, 7, 7, 1], ["x", "x", "y", "y", "y", ""])
    assert perfect.ari == pytest.approx(1.0) and perfect.exact_scenes == 2
    assert perfect.n_images == 5  # the unlabelled image is ignored
    with pytest.raises(ValueError, match="labelled"):
        groups.group_quality([0, 1], ["", ""])


def test_bad_input():
    with pytest.raises(ValueError, match="Unknown grouping method"):
        groups.duplicate_groups(CHAIN, 0.5, method="kmeans")
    with pytest.raises(ValueError, match="needs a threshold"):
        groups.duplicate_groups(CHAIN)
    with pytest.raises(ValueError, match="cosine"):
        groups.duplicate_groups(CHAIN, 3.0)
    with pytest.raises(ValueError, match="2-D"):
        groups.duplicate_groups(CHAIN[0], 0.5)
    empty = groups.duplicate_groups(np.zeros((0, 4), np.float32), 0.5)
    assert empty.n_groups == 0 and len(empty.labels) == 0


def test_oversized_component_is_split(monkeypatch):
    monkeypatch.setattr(groups, "MAX_LINKAGE", 4)
    with pytest.warns(UserWarning, match="split at higher thresholds"):
        g = groups.duplicate_groups(CHAIN, float(np.cos(np.deg2rad(25))))
    assert g.labels[0] == g.labels[1] == g.labels[2] and g.labels[4] == g.labels[6]
    assert g.labels[0] != g.labels[4]


def test_groups_recover_the_planted_scenes(tiny_collection, lite0):
    col = data.load_collection(tiny_collection)
    prep = data.Preprocess(128, **models.normalisation_for("efficientnet_lite0"))
    desc = features.extract(lite0, col.paths, prep, batch_size=8, progress=False)
    scenes = col.scenes
    # threshold chosen on the images of four scenes (validation), applied to all seven
    val = np.flatnonzero(np.isin(scenes, sorted(set(scenes))[:4]))
    t = retrieval.choose_threshold(desc, scenes, val)
    # it maximises the pairwise F1 of the validation pairs (brute force over every cosine)
    s = desc[val] @ desc.T
    same = scenes[val][:, None] == scenes[None, :]
    other = np.arange(len(desc))[None, :] != val[:, None]
    cos, rel = s[other], same[other]

    def f1(th):
        tp = (rel & (cos >= th)).sum()
        return 2 * tp / ((cos >= th).sum() + rel.sum())

    assert f1(t) == pytest.approx(max(f1(th) for th in cos), abs=1e-6) and f1(t) > 0.5
    g = groups.duplicate_groups(desc, t)
    q = groups.group_quality(g.labels, scenes)
    assert q.ari > 0.85 and q.purity == 1.0
    assert q.n_groups >= 6 and q.exact_scenes >= 5
