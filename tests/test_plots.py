"""Tests of cbir_utils.evidence.plots: every figure is built from tiny inputs and saved as a PNG."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from cbir_utils.evaluation.metrics import pr_curve as metrics_pr_curve  # noqa: E402
from cbir_utils.evidence import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _check_png(path, min_width: int = 200) -> tuple[int, int]:
    assert path.exists(), path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert w >= min_width and h >= 100, (w, h)
    # atomic save leaves no temporary file behind
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))
    return w, h


@pytest.fixture
def images(tmp_path):
    """Small images of different sizes and modes (landscape, portrait, grey, RGBA)."""
    rng = np.random.default_rng(0)
    specs = [((40, 30), "RGB"), ((24, 48), "RGB"), ((32, 32), "L"), ((36, 20), "RGBA")]
    paths = []
    for i, ((w, h), mode) in enumerate(specs):
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        im = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
        p = tmp_path / "img" / f"im{i}.png"
        p.parent.mkdir(exist_ok=True)
        im.save(p)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- class imbalance


def test_class_imbalance_many_scenes(tmp_path):
    counts = pd.Series(np.arange(72) % 9 + 2, index=[f"scene {i}" for i in range(72)])
    out = tmp_path / "imbalance.png"
    fig = plots.class_imbalance(counts, path=out)
    assert isinstance(fig, Figure)
    assert plt.fignum_exists(fig.number)  # saved, not closed
    _check_png(out)
    bar_ax, hist_ax = fig.axes
    heights = [p.get_height() for p in bar_ax.patches]
    assert len(heights) == 72
    assert heights == sorted(heights, reverse=True)
    assert bar_ax.get_xticks().size == 0  # names hidden beyond 40 scenes
    # histogram: number of scenes having n images, n = 2..10, 8 scenes each
    assert sum(p.get_height() for p in hist_ax.patches) == 72


def test_class_imbalance_few_scenes_shows_names(tmp_path):
    counts = pd.Series({"Verdun": 3, "Paris parade": 12, "Kaiser visit": 5})
    fig = plots.class_imbalance(counts, path=tmp_path / "few.png")
    _check_png(tmp_path / "few.png")
    names = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert names == ["Paris parade", "Kaiser visit", "Verdun"]


def test_class_imbalance_empty():
    with pytest.raises(ValueError):
        plots.class_imbalance(pd.Series([], dtype=int))


# --------------------------------------------------------------------------- gallery


def _frame_color(ax):
    frames = [p for p in ax.patches if p.get_gid() == "frame"]
    assert len(frames) == 1
    return frames[0].get_edgecolor()


def test_retrieval_gallery_unequal_rows(tmp_path, images):
    a, b, c, d = images
    results = [
        [(b, 0.95, True), (c, 0.81, False), (d, 0.62, True)],
        [(a, 0.70, False)],
        [],
    ]
    out = tmp_path / "gallery.png"
    fig = plots.retrieval_gallery(
        [a, b, c], results, path=out, title="demo", thumb=1.2, labels=["A", "B", "C"]
    )
    _check_png(out)
    gids = [ax.get_gid() for ax in fig.axes]
    assert len(gids) == 3 + 4  # one image axes per query and per result, none for blanks
    assert gids.count("query") == 3
    assert gids.count("relevant") == 2
    assert gids.count("irrelevant") == 2
    colours = {
        "query": plots.QUERY_COLOR,
        "relevant": plots.RELEVANT_COLOR,
        "irrelevant": plots.IRRELEVANT_COLOR,
    }
    for ax in fig.axes:
        assert _frame_color(ax) == pytest.approx(to_rgba(colours[ax.get_gid()]))
        assert len(ax.images) == 1
    captions = [ax.get_xlabel() for ax in fig.axes if ax.get_gid() != "query"]
    assert captions[0].startswith("#1") and "0.950" in captions[0]
    assert captions[2].startswith("#3") and "0.620" in captions[2]


def test_retrieval_gallery_ten_results_and_unreadable(tmp_path, images):
    row = [(images[i % 4], 1.0 - i / 20, i % 3 == 0) for i in range(9)]
    row.append((tmp_path / "missing.png", 0.4, None))  # unreadable -> grey placeholder
    fig = plots.retrieval_gallery([images[0]], [row], path=tmp_path / "g10.png", thumb=1.0)
    _check_png(tmp_path / "g10.png")
    assert len(fig.axes) == 11
    assert fig.axes[-1].get_gid() == "unknown"
    assert _frame_color(fig.axes[-1]) == pytest.approx(to_rgba(plots.UNKNOWN_COLOR))


def test_retrieval_gallery_checks_lengths(images):
    with pytest.raises(ValueError):
        plots.retrieval_gallery([images[0], images[1]], [[]])
    with pytest.raises(ValueError):
        plots.retrieval_gallery([images[0]], [[]], labels=["a", "b"])


# --------------------------------------------------------------------------- PR curve


def _toy_curves():
    rng = np.random.default_rng(1)
    rel = rng.random((6, 20)) < 0.3
    good = np.where(rel, 0.8, 0.3) + rng.normal(0, 0.15, rel.shape)
    bad = rng.random(rel.shape)
    return {"fine-tuned": metrics_pr_curve(good, rel), "pretrained": metrics_pr_curve(bad, rel)}


def test_pr_curve_marks_operating_points(tmp_path):
    curves = _toy_curves()
    t = float(curves["fine-tuned"]["threshold"].iloc[5])
    out = tmp_path / "pr.png"
    fig = plots.pr_curve(curves, path=out, mark_threshold={"fine-tuned": t})
    _check_png(out)
    ax = fig.axes[0]
    dots = [ln for ln in ax.lines if ln.get_marker() == "o"]
    assert len(dots) == 1  # only the method named in the mapping
    row = curves["fine-tuned"].iloc[5]  # smallest threshold >= t is t itself
    assert dots[0].get_xdata()[0] == pytest.approx(row["recall"])
    assert dots[0].get_ydata()[0] == pytest.approx(row["precision"])
    assert any(f"t = {t:.3f}" in txt.get_text() for txt in ax.texts)
    legend = [txt.get_text() for txt in ax.get_legend().get_texts()]
    assert any(s.startswith("fine-tuned") for s in legend)
    assert any(s.startswith("pretrained") for s in legend)


def test_pr_curve_single_frame_and_float_threshold(tmp_path):
    frame = _toy_curves()["pretrained"]
    fig = plots.pr_curve(frame, path=tmp_path / "pr1.png", mark_threshold=0.5)
    _check_png(tmp_path / "pr1.png")
    dots = [ln for ln in fig.axes[0].lines if ln.get_marker() == "o"]
    assert len(dots) == 1
    row = frame[frame["threshold"] >= 0.5].iloc[-1]  # thresholds are descending
    assert dots[0].get_xdata()[0] == pytest.approx(row["recall"])


# --------------------------------------------------------------------------- training curves


def _history(stages, restart: bool = False):
    rows = []
    epoch_in_stage = {}
    for e, stage in enumerate(stages, start=1):
        epoch_in_stage[stage] = epoch_in_stage.get(stage, 0) + 1
        for split, shift in (("train", 0.05), ("val", 0.0)):
            v = min(0.4 + 0.05 * e + shift, 1.0)
            rows.append(
                {
                    "epoch": epoch_in_stage[stage] if restart else e,
                    "stage": stage,
                    "split": split,
                    "loss": 2.0 / e + shift,
                    "accuracy": v,
                    "precision": v,
                    "recall": v - 0.02,
                    "f1": v - 0.01,
                }
            )
    return pd.DataFrame(rows)


def _boundaries(ax):
    return [ln for ln in ax.lines if ln.get_gid() == plots.STAGE_BOUNDARY_GID]


def test_training_curves_files_and_stage_lines(tmp_path):
    stages = [1, 1, 2, 2, 2, 3, 3]  # two stage changes
    prefix = tmp_path / "curves" / "run1"
    figs = plots.training_curves(_history(stages), path_prefix=prefix)
    assert set(figs) == {"loss", "precision", "recall", "f1", "combined"}
    for key in figs:
        _check_png(tmp_path / "curves" / f"run1_{key}.png")
    for key in ("loss", "precision", "recall", "f1"):
        (ax,) = figs[key].axes
        lines = _boundaries(ax)
        assert len(lines) == 2
        assert [ln.get_xdata()[0] for ln in lines] == [2.5, 5.5]
        labels = {t.get_text() for t in ax.texts}
        assert {"stage 2", "stage 3"} <= labels
        splits = {ln.get_label() for ln in ax.lines}
        assert {"train", "val"} <= splits
    combined = figs["combined"].axes
    assert len(combined) == 4
    assert all(len(_boundaries(ax)) == 2 for ax in combined)


def test_training_curves_epochs_restarting_per_stage():
    figs = plots.training_curves(_history([1, 1, 2, 2, 2], restart=True))
    ax = figs["f1"].axes[0]
    assert [ln.get_xdata()[0] for ln in _boundaries(ax)] == [2.5]
    train = next(ln for ln in ax.lines if ln.get_label() == "train")
    assert list(train.get_xdata()) == [1, 2, 3, 4, 5]  # counted across stages


def test_training_curves_single_stage_and_missing_columns():
    figs = plots.training_curves(_history([1, 1, 1]))
    assert all(not _boundaries(ax) for fig in figs.values() for ax in fig.axes)
    with pytest.raises(KeyError):
        plots.training_curves(_history([1]).drop(columns=["f1"]))


# --------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_small_annotated(tmp_path):
    names = ["Verdun", "Paris", "Berlin"]
    y_true = ["Verdun", "Verdun", "Paris", "Berlin", "Berlin", "Berlin"]
    y_pred = ["Verdun", "Paris", "Paris", "Berlin", "Berlin", "Verdun"]
    fig = plots.confusion_matrix(y_true, y_pred, names, path=tmp_path / "cm.png")
    _check_png(tmp_path / "cm.png")
    ax = fig.axes[0]
    values = np.asarray(ax.collections[0].get_array()).reshape(3, 3)
    np.testing.assert_allclose(values.sum(axis=1), 1.0)
    np.testing.assert_allclose(values[2], [1 / 3, 0, 2 / 3])
    texts = [t.get_text() for t in ax.texts]
    assert "0.67" in texts and "0.50" in texts
    assert "0.00" not in texts  # empty cells left blank


def test_confusion_matrix_many_classes_counts(tmp_path):
    n = 50
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, n, 400)
    y_pred = np.where(rng.random(400) < 0.7, y_true, rng.integers(0, n, 400))
    names = [f"scene {i}" for i in range(n)]
    fig = plots.confusion_matrix(y_true, y_pred, names, path=tmp_path / "cm50.png", normalize=False)
    _check_png(tmp_path / "cm50.png")
    ax = fig.axes[0]
    assert not ax.texts  # no annotations with > 20 classes
    assert np.asarray(ax.collections[0].get_array()).sum() == 400
    assert len(ax.get_xticklabels()) == n


def test_confusion_matrix_rejects_unknown_label():
    with pytest.raises(ValueError):
        plots.confusion_matrix(["a"], ["zzz"], ["a", "b"])


# --------------------------------------------------------------------------- comparison bars


def test_comparison_bars(tmp_path):
    rows = []
    for protocol in ("val", "test"):
        for i, method in enumerate(("pretrained", "fine-tuned desc", "fine-tuned logits")):
            rows.append(
                {
                    "protocol": protocol,
                    "method": method,
                    "mAP": 0.5 + 0.1 * i,
                    "P@1": 0.6 + 0.1 * i,
                    "nDCG@10": 0.55 + 0.1 * i,
                    "pair_f1": 0.4 + 0.1 * i,
                }
            )
    table = pd.DataFrame(rows)
    table.loc[5, "pair_f1"] = np.nan
    metrics = ["mAP", "P@1", "nDCG@10", "pair_f1"]
    out = tmp_path / "bars.png"
    fig = plots.comparison_bars(table, metrics, path=out)
    _check_png(out)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == metrics
    for ax in axes:
        assert ax.get_ylim()[0] == 0 and 1.0 <= ax.get_ylim()[1] <= 1.2
        assert len(ax.patches) == 6  # 2 protocols x 3 methods
        assert [t.get_text() for t in ax.get_xticklabels()] == ["val", "test"]
    labels = [t.get_text() for t in axes[0].texts]
    assert "0.500" in labels and "0.700" in labels
    assert "n/a" in [t.get_text() for t in axes[3].texts]
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [
        "pretrained",
        "fine-tuned desc",
        "fine-tuned logits",
    ]


def test_comparison_bars_missing_column():
    with pytest.raises(KeyError):
        plots.comparison_bars(pd.DataFrame({"method": ["a"], "mAP": [0.5]}), ["mAP"])
