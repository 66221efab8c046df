"""Figures: class imbalance, retrieval galleries, PR curves, training curves, confusion
matrices and method comparisons.

Every function returns a new ``Figure`` and writes it as PNG, atomically, when ``path`` is
given. Nothing here shows, closes a figure or chooses a backend: a loop making many figures
should ``plt.close(fig)`` each.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from cbir_utils.errors import InputError, TableColumnsError
from cbir_utils.io import save_figure
from cbir_utils.paths import split_region
from cbir_utils.sources.data import load_image

PathLike = str | os.PathLike

# Frame colours of the retrieval gallery (colour-blind friendly blue / green / red).
QUERY_COLOR = "#2166ac"
RELEVANT_COLOR = "#1a9850"
IRRELEVANT_COLOR = "#d73027"
UNKNOWN_COLOR = "#8c8c8c"

# ``gid`` given to the dashed stage-boundary lines of ``training_curves`` (for tests/callers).
STAGE_BOUNDARY_GID = "stage-boundary"

_SPLIT_STYLE = {
    "train": {"color": "#1f77b4", "linestyle": "-"},
    "val": {"color": "#ff7f0e", "linestyle": "-"},
    "test": {"color": "#2ca02c", "linestyle": "-"},
}
_TRAINING_METRICS = {
    "loss": ("Loss", "loss (lower is better)"),
    "precision": ("Precision", "precision"),
    "recall": ("Recall", "recall"),
    "f1": ("F1 score", "F1"),
}


def _finish(fig: Figure, path: PathLike | None) -> Figure:
    if path is not None:
        save_figure(path, fig)
    return fig


def _short(label: Any, width: int = 28) -> str:
    text = str(label)
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- class imbalance


def class_imbalance(
    scene_counts: pd.Series,
    path: PathLike | None = None,
    title: str = "Images per scene",
) -> Figure:
    """Images per scene, one bar a scene largest first (names up to 40 scenes), and the
    histogram of "number of scenes having n images".
    """
    counts = pd.Series(scene_counts).dropna()
    if counts.empty:
        raise InputError("scene_counts is empty")
    counts = counts.astype(int).sort_values(ascending=False, kind="stable")
    n = len(counts)
    values = counts.to_numpy()

    width = float(np.clip(4.0 + 0.16 * n, 10.0, 18.0))
    fig = plt.figure(figsize=(width, 4.8), layout="constrained")
    gs = fig.add_gridspec(1, 2, width_ratios=[3.2, 1.0])
    ax = fig.add_subplot(gs[0, 0])
    hax = fig.add_subplot(gs[0, 1])

    x = np.arange(n)
    ax.bar(x, values, width=0.8, color="#4c72b0", edgecolor="none")
    mean = float(values.mean())
    ax.axhline(mean, color="0.3", linestyle="--", linewidth=1)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("number of images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if n <= 40:
        ax.set_xticks(x)
        fontsize = 9 if n <= 20 else 7
        ax.set_xticklabels(
            [_short(s, 24) for s in counts.index],
            rotation=60 if n <= 20 else 90,
            ha="right" if n <= 20 else "center",
            rotation_mode="anchor" if n <= 20 else "default",
            fontsize=fontsize,
        )
        ax.set_xlabel("scene (sorted by number of images)")
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{n} scenes, sorted by number of images (names omitted)")
    summary = (
        f"{n} scenes, {int(values.sum())} images\n"
        f"min {values.min()}, median {np.median(values):g}, max {values.max()}\n"
        f"mean {mean:.1f} (dashed line)"
    )
    ax.text(
        0.98,
        0.95,
        summary,
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=9,
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.8", "alpha": 0.9},
    )
    ax.set_title("Number of images of each scene, largest first")
    sns.despine(ax=ax)
    ax.grid(axis="y", alpha=0.3)

    lo, hi = int(values.min()), int(values.max())
    if hi - lo <= 40:
        sizes = np.arange(lo, hi + 1)
        n_scenes = np.array([(values == s).sum() for s in sizes])
        hax.bar(sizes, n_scenes, width=0.85, color="#dd8452")
        hax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        edges = np.unique(np.linspace(lo, hi + 1, 21).round().astype(int))
        hax.hist(values, bins=edges, color="#dd8452", edgecolor="white")
    hax.yaxis.set_major_locator(MaxNLocator(integer=True))
    hax.set_xlabel("n = images in the scene")
    hax.set_ylabel("number of scenes having n images")
    hax.set_title("Distribution of scene sizes")
    sns.despine(ax=hax)
    hax.grid(axis="y", alpha=0.3)

    fig.suptitle(title, fontsize=14)
    return _finish(fig, path)


# --------------------------------------------------------------------------- retrieval gallery


def _thumbnail(path: PathLike, max_px: int) -> np.ndarray | None:
    try:
        im = load_image(path)
    except (OSError, ValueError):
        return None
    im.thumbnail((max_px, max_px))
    return np.asarray(im)


def _framed_image(ax, img: np.ndarray | None, color: str, linewidth: float) -> None:
    """Draw ``img`` centred in a fixed square cell of ``ax`` (captions of a row line up) with a
    coloured frame tight around it (a ``Rectangle`` whose ``gid`` is ``"frame"``).
    """
    if img is None:  # grey square with a note
        img = np.full((100, 100, 3), 235, dtype=np.uint8)
        ax.text(50, 50, "image\nunreadable", ha="center", va="center", fontsize=8, color="0.3")
    h, w = img.shape[:2]
    ax.imshow(img, extent=(0, w, h, 0), interpolation="antialiased")
    side = max(w, h) * 1.08  # square cell, image centred in it with a small margin
    ax.set_xlim((w - side) / 2, (w + side) / 2)
    ax.set_ylim((h + side) / 2, (h - side) / 2)
    ax.set_aspect("equal", adjustable="box")
    frame = Rectangle(
        (0, 0), w, h, fill=False, edgecolor=color, linewidth=linewidth, clip_on=False, zorder=3
    )
    frame.set_gid("frame")
    ax.add_patch(frame)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def retrieval_gallery(
    query_paths: Sequence[PathLike],
    results: Sequence[Sequence[tuple[PathLike, float, bool | None]]],
    path: PathLike | None = None,
    title: str | None = None,
    thumb: float = 2.0,
    labels: Sequence[str] | None = None,
) -> Figure:
    """One row per query: the query (blue frame), then its results best first.

    ``results`` per query: ``(path, score, relevant[, caption])``; a result's frame is green
    when relevant, red when not, grey when unknown (``None``), its rank and score under it.
    Each image's axes has the ``gid`` ``"query"``, ``"relevant"``, ``"irrelevant"`` or
    ``"unknown"``; unreadable images are grey squares.
    """
    n_rows = len(query_paths)
    if n_rows == 0:
        raise InputError("no query to show")
    if len(results) != n_rows:
        raise InputError(f"{len(results)} result lists for {n_rows} queries")
    if labels is not None and len(labels) != n_rows:
        raise InputError(f"{len(labels)} labels for {n_rows} queries")
    k = max((len(r) for r in results), default=0)

    # query column, a narrow spacer, then the k result columns
    ncols = 2 + k if k else 1
    ratios = [1.0, 0.12] + [1.0] * k if k else [1.0]
    fig_w = thumb * (sum(ratios) + 0.2)
    fig_h = thumb * 1.25 * n_rows + 0.8
    fig = plt.figure(figsize=(max(fig_w, 4.5), fig_h), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.03, wspace=0.0, hspace=0.08)
    gs = fig.add_gridspec(n_rows, ncols, width_ratios=ratios)
    max_px = int(round(thumb * 110 * 1.5))
    fontsize = 7 if thumb < 1.2 else 8 if thumb < 1.8 else 9
    linewidth = 3.0 if thumb < 1.8 else 4.0

    for i, (qpath, row) in enumerate(zip(query_paths, results, strict=True)):
        ax = fig.add_subplot(gs[i, 0])
        _framed_image(ax, _thumbnail(qpath, max_px), QUERY_COLOR, linewidth)
        ax.set_gid("query")
        ax.set_xlabel("query", color=QUERY_COLOR, fontsize=fontsize, fontweight="bold")
        if labels is not None and labels[i]:
            lines = textwrap.wrap(str(labels[i]), max(10, int(thumb * 12)))
            if len(lines) > 2:
                lines = [lines[0], _short(" ".join(lines[1:]), len(lines[1]))]
            ax.set_title("\n".join(lines), fontsize=fontsize)
        for j, item in enumerate(row):
            rpath, score, relevant = item[:3]
            caption = str(item[3]) if len(item) > 3 and item[3] else ""
            if relevant is None:
                color, gid, mark = UNKNOWN_COLOR, "unknown", ""
            elif bool(relevant):
                color, gid, mark = RELEVANT_COLOR, "relevant", "  ✓"
            else:
                color, gid, mark = IRRELEVANT_COLOR, "irrelevant", "  ✗"
            rax = fig.add_subplot(gs[i, 2 + j])
            _framed_image(rax, _thumbnail(rpath, max_px), color, linewidth)
            rax.set_gid(gid)
            sep = "   " if thumb >= 1.6 else "\n"  # narrow cells: two short lines
            text = f"#{j + 1}{sep}cos {float(score):.3f}{mark}"
            if caption:  # provenance: periodical, date, page
                text += "\n" + "\n".join(textwrap.wrap(caption, max(12, int(thumb * 11)))[:2])
            rax.set_xlabel(text, color=color, fontsize=fontsize)

    handles = [
        Patch(facecolor="white", edgecolor=QUERY_COLOR, linewidth=2.5, label="query"),
        Patch(
            facecolor="white",
            edgecolor=RELEVANT_COLOR,
            linewidth=2.5,
            label="✓ same scene (relevant)",
        ),
        Patch(
            facecolor="white", edgecolor=IRRELEVANT_COLOR, linewidth=2.5, label="✗ different scene"
        ),
    ]
    if any(item[2] is None for row in results for item in row):
        handles.append(
            Patch(facecolor="white", edgecolor=UNKNOWN_COLOR, linewidth=2.5, label="unknown")
        )
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=len(handles),
        frameon=False,
        fontsize=fontsize,
        handlelength=1.2,
    )
    if title:
        fig.suptitle(title, fontsize=13)
    return _finish(fig, path)


# --------------------------------------------------------------------------- PR curve


def _operating_row(curve: pd.DataFrame, threshold: float) -> pd.Series:
    """Row matching the rule ``score >= threshold``: the smallest curve threshold >= it."""
    above = curve[curve["threshold"] >= threshold]
    if len(above):
        return above.loc[above["threshold"].idxmin()]
    return curve.loc[(curve["threshold"] - threshold).abs().idxmin()]


def _decimate(curve: pd.DataFrame, max_points: int = 4000) -> pd.DataFrame:
    if len(curve) <= max_points:
        return curve
    idx = np.unique(np.linspace(0, len(curve) - 1, max_points).round().astype(int))
    return curve.iloc[idx]


def pr_curve(
    curves: Mapping[str, pd.DataFrame] | pd.DataFrame,
    path: PathLike | None = None,
    mark_threshold: float | Mapping[str, float] | None = None,
    title: str = "Precision–recall of pair decisions",
) -> Figure:
    """Precision-recall curves, one per method (``{method: metrics.pr_curve frame}``), with
    iso-F1 contours and ``mark_threshold`` (one, or one per method) marked as ``score >= t``.
    """
    if isinstance(curves, pd.DataFrame):
        curves = {str(curves.attrs.get("name", "")): curves}
    if not curves:
        raise InputError("no curve to plot")
    fig, ax = plt.subplots(figsize=(7.5, 6.2), layout="constrained")

    # iso-F1 contours help reading the precision/recall trade-off
    r = np.linspace(0.01, 1, 300)
    for f in (0.2, 0.4, 0.6, 0.8):
        with np.errstate(divide="ignore", invalid="ignore"):
            p = f * r / (2 * r - f)
        ok = (p >= 0) & (p <= 1.0) & (r >= f / 2)
        ax.plot(r[ok], p[ok], color="0.75", linestyle=":", linewidth=1, zorder=0)
        ax.text(1.005, f / (2 - f), f"F1={f:.1f}", fontsize=7, color="0.5", va="center")

    palette = sns.color_palette("colorblind", n_colors=max(len(curves), 3))
    for i, (name, frame) in enumerate(curves.items()):
        missing = {"threshold", "precision", "recall", "f1"} - set(frame.columns)
        if missing:
            raise TableColumnsError(f"curve {name!r} lacks columns {sorted(missing)}")
        curve = frame.dropna(subset=["precision", "recall"])
        curve = curve.sort_values(["recall", "threshold"], ascending=[True, False], kind="stable")
        curve = curve.reset_index(drop=True)
        color = palette[i]
        best_f1 = float(curve["f1"].max()) if len(curve) else float("nan")
        label = f"{name} (best F1 {best_f1:.2f})" if name else f"best F1 {best_f1:.2f}"
        shown = _decimate(curve)
        ax.plot(shown["recall"], shown["precision"], color=color, linewidth=2, label=label)

        if isinstance(mark_threshold, Mapping):
            t = mark_threshold.get(name)
        else:
            t = mark_threshold
        if t is None or not len(curve):
            continue
        row = _operating_row(curve, float(t))
        rx, py, f1 = float(row["recall"]), float(row["precision"]), float(row["f1"])
        ax.plot(
            rx,
            py,
            "o",
            color=color,
            markersize=9,
            markeredgecolor="black",
            zorder=5,
            label=f"operating point t = {float(t):.3f}: P {py:.2f}, R {rx:.2f}, F1 {f1:.2f}",
        )
        # short note next to the dot (details in the legend), inside the plot area
        dx = -10 if rx > 0.8 else 10
        dy = -12 if py > 0.9 else 8
        ax.annotate(
            f"t = {float(t):.3f}",
            (rx, py),
            xytext=(dx, dy),
            textcoords="offset points",
            ha="right" if dx < 0 else "left",
            va="top" if dy < 0 else "bottom",
            fontsize=8.5,
            fontweight="bold",
            color=color,
            zorder=6,
            bbox={
                "boxstyle": "round,pad=0.2",
                "facecolor": "white",
                "edgecolor": color,
                "alpha": 0.85,
            },
        )

    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (share of true reprint pairs found)")
    ax.set_ylabel("precision (share of proposed pairs that are true)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8.5)
    return _finish(fig, path)


# --------------------------------------------------------------------------- training curves


def _epoch_axis(history: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Add column ``_x``: the epoch, or a running epoch count when epochs restart per stage."""
    h = history.copy()
    if "stage" not in h.columns:
        h["_x"] = h["epoch"]
        return h, "epoch"
    keys = h[["stage", "epoch"]].drop_duplicates().sort_values(["stage", "epoch"], kind="stable")
    if keys["epoch"].is_monotonic_increasing and keys["epoch"].is_unique:
        h["_x"] = h["epoch"]
        return h, "epoch"
    keys = keys.assign(_x=np.arange(1, len(keys) + 1))
    h = h.merge(keys, on=["stage", "epoch"], how="left")
    return h, "epoch (counted across stages)"


def _stage_boundaries(h: pd.DataFrame) -> list[tuple[float, Any]]:
    """``(x, new_stage)`` for each place where the stage changes between consecutive epochs."""
    if "stage" not in h.columns:
        return []
    per_x = h.dropna(subset=["stage"]).groupby("_x", sort=True)["stage"].first()
    xs, stages = per_x.index.to_numpy(dtype=float), per_x.to_numpy()
    return [
        ((xs[j - 1] + xs[j]) / 2.0, stages[j])
        for j in range(1, len(xs))
        if stages[j] != stages[j - 1]
    ]


def _stage_label(stage: Any) -> str:
    if isinstance(stage, (float, np.floating)) and float(stage).is_integer():
        stage = int(stage)
    return f"stage {stage}"


def _draw_training_metric(ax, h, metric, boundaries, xlabel, fontsize=9) -> None:
    name, ylabel = _TRAINING_METRICS[metric]
    splits = list(h["split"].dropna().unique())
    order = [s for s in ("train", "val", "test") if s in splits]
    order += [s for s in splits if s not in order]
    n_epochs = h["_x"].nunique()
    marker = "o" if n_epochs <= 40 else None
    extra = sns.color_palette("Dark2", n_colors=max(len(order), 3))
    for i, split in enumerate(order):
        d = h[h["split"] == split].groupby("_x", sort=True)[metric].mean().dropna()
        if d.empty:
            continue
        style = _SPLIT_STYLE.get(split, {"color": extra[i], "linestyle": "-"})
        ax.plot(
            d.index,
            d.to_numpy(),
            marker=marker,
            markersize=3.5,
            linewidth=1.8,
            label=split,
            **style,
        )
        if split == "val":
            j = int(np.argmin(d.to_numpy()) if metric == "loss" else np.argmax(d.to_numpy()))
            bx, by = d.index[j], float(d.iloc[j])
            ax.plot(
                bx,
                by,
                "*",
                color=style["color"],
                markersize=13,
                markeredgecolor="black",
                label=f"best val {by:.3f} (epoch {bx:g})",
                zorder=5,
            )
    if metric != "loss":
        ax.set_ylim(0, 1.05)
    if boundaries:  # name the first stage too, at the left edge
        first = h.dropna(subset=["stage"]).sort_values("_x", kind="stable")["stage"].iloc[0]
        ax.text(
            0.0,
            1.01,
            _stage_label(first),
            transform=ax.transAxes,
            ha="left",
            va="bottom",
            fontsize=fontsize - 1,
            color="0.3",
        )
    for x, stage in boundaries:
        line = ax.axvline(x, color="0.35", linestyle="--", linewidth=1.2, zorder=1)
        line.set_gid(STAGE_BOUNDARY_GID)
        ax.text(
            x,
            1.01,
            _stage_label(stage),
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=fontsize - 1,
            color="0.3",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    # stage names sit just above the plot frame, so the title moves up when there are some
    ax.set_title(f"{name} per epoch", pad=18 if boundaries else 6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=fontsize - 1, loc="best")


def training_curves(
    history: pd.DataFrame,
    path_prefix: PathLike | None = None,
    title: str | None = None,
) -> dict[str, Figure]:
    """Loss, precision, recall and F1 over epochs, train and val lines.

    ``history`` has one row per (epoch, split); epochs that restart in each stage are counted
    across stages, and stage changes are dashed lines (``gid`` :data:`STAGE_BOUNDARY_GID`); the
    best validation value is a star. Returns ``{"loss", "precision", "recall", "f1",
    "combined"}``, saved as ``<path_prefix>_<name>.png`` when given.
    """
    required = {"epoch", "split", *_TRAINING_METRICS}
    missing = required - set(history.columns)
    if missing:
        raise TableColumnsError(f"history lacks columns {sorted(missing)}")
    if history.empty:
        raise InputError("history is empty")
    h, xlabel = _epoch_axis(history)
    boundaries = _stage_boundaries(h)

    figs: dict[str, Figure] = {}
    for metric in _TRAINING_METRICS:
        fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
        _draw_training_metric(ax, h, metric, boundaries, xlabel)
        figs[metric] = fig
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), layout="constrained")
    for ax, metric in zip(axes.flat, _TRAINING_METRICS, strict=True):
        _draw_training_metric(ax, h, metric, boundaries, xlabel)
    fig.suptitle(title or "Training curves (train vs validation)", fontsize=14)
    figs["combined"] = fig

    if path_prefix is not None:
        prefix = str(path_prefix)
        for key, f in figs.items():
            save_figure(f"{prefix}_{key}.png", f)
    return figs


# --------------------------------------------------------------------------- confusion matrix


def _class_indices(values: Any, class_names: Sequence[str]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(int)
    if arr.dtype.kind in "iu":
        idx = arr.astype(int)
    else:
        lookup = {str(c): i for i, c in enumerate(class_names)}
        try:
            idx = np.array([lookup[str(v)] for v in arr.ravel()], dtype=int)
        except KeyError as err:
            raise InputError(f"label {err.args[0]!r} is not in class_names") from None
    if idx.size and (idx.min() < 0 or idx.max() >= len(class_names)):
        raise InputError("class index out of range of class_names")
    return idx.ravel()


def confusion_matrix(
    y_true: Any,
    y_pred: Any,
    class_names: Sequence[str],
    path: PathLike | None = None,
    normalize: bool = True,
    title: str | None = None,
) -> Figure:
    """Confusion-matrix heatmap (rows true, columns predicted; classes as indices or names);
    ``normalize`` divides each row by its count; cells annotated up to 20 classes.
    """
    n = len(class_names)
    if n == 0:
        raise InputError("class_names is empty")
    t, p = _class_indices(y_true, class_names), _class_indices(y_pred, class_names)
    if t.shape != p.shape:
        raise InputError(f"{t.size} true labels but {p.size} predictions")
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    accuracy = float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan")
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    else:
        values = cm

    side = float(np.clip(2.5 + 0.24 * n, 6.0, 18.0))
    fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    annot: bool | np.ndarray = False
    if n <= 20:  # write the values, leaving empty cells blank
        fmt = "{:.2f}" if normalize else "{:d}"
        annot = np.array(
            [
                ["" if c == 0 else fmt.format(v) for c, v in zip(cr, vr, strict=True)]
                for cr, vr in zip(cm, values, strict=True)
            ]
        )
    tick_fs = 10 if n <= 12 else 9 if n <= 25 else 7 if n <= 60 else 5
    names = [_short(c, 24) for c in class_names]
    sns.heatmap(
        values,
        ax=ax,
        cmap="Blues",
        vmin=0,
        vmax=1 if normalize else None,
        square=True,
        annot=annot,
        fmt="",
        annot_kws={"fontsize": 8 if n > 10 else 10},
        linewidths=0.3 if n <= 60 else 0,
        linecolor="0.92",
        xticklabels=names,
        yticklabels=names,
        cbar_kws={
            "shrink": 0.6,
            "label": "share of the true class" if normalize else "number of images",
        },
    )
    ax.tick_params(axis="both", labelsize=tick_fs, length=2)
    ax.set_xticklabels(ax.get_xticklabels(), rotation=90)
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title is None:
        kind = "row-normalised" if normalize else "counts"
        title = f"Confusion matrix ({kind}), accuracy {accuracy:.3f} on {int(cm.sum())} images"
    ax.set_title(title)
    return _finish(fig, path)


# --------------------------------------------------------------------------- comparison bars


def comparison_bars(
    table: pd.DataFrame,
    metrics: Sequence[str],
    path: PathLike | None = None,
    group: str | None = "protocol",
    hue: str = "method",
    title: str | None = "Comparison of methods",
) -> Figure:
    """Grouped bars, one subplot per metric of a long ``table``: x = ``group`` values, one colour
    per ``hue``, values written on the bars (duplicates averaged, missing ones no bar).
    """
    metrics = list(metrics)
    if not metrics:
        raise InputError("no metric to plot")
    needed = [c for c in [group, hue, *metrics] if c is not None]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise TableColumnsError(f"table lacks columns {missing}")
    if table.empty:
        raise InputError("table is empty")
    df = table.copy()
    gcol = group if group is not None else "_group"
    if group is None:
        df[gcol] = ""
    df[gcol] = df[gcol].astype(str)
    df[hue] = df[hue].astype(str)
    groups = list(dict.fromkeys(df[gcol]))
    methods = list(dict.fromkeys(df[hue]))
    means = df.groupby([gcol, hue], sort=False)[metrics].mean()

    ncols = len(metrics) if len(metrics) <= 3 else 2 if len(metrics) == 4 else 3
    nrows = math.ceil(len(metrics) / ncols)
    sub_w = max(3.6, 0.4 * len(groups) * len(methods) + 1.4)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(sub_w * ncols, 4.4 * nrows + 0.6),
        layout="constrained",
        squeeze=False,
        sharey=True,
    )
    palette = sns.color_palette("colorblind", n_colors=max(len(methods), 3))
    width = 0.8 / len(methods)
    x = np.arange(len(groups))
    n_bars = len(groups) * len(methods)
    label_fs = 8 if n_bars <= 12 else 7 if n_bars <= 20 else 6
    rotation = 0 if len(methods) <= 3 else 90
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for j, method in enumerate(methods):
            heights = means[metric].reindex([(g, method) for g in groups]).to_numpy(float)
            pos = x - 0.4 + width * (j + 0.5)
            bars = ax.bar(
                pos, np.nan_to_num(heights), width=width * 0.92, color=palette[j], label=method
            )
            ax.bar_label(
                bars,
                labels=["n/a" if np.isnan(v) else f"{v:.3f}" for v in heights],
                padding=2,
                fontsize=label_fs,
                rotation=rotation,
            )
        ax.set_xticks(x)
        ax.set_xticklabels(groups, fontsize=9)
        ax.set_ylim(0, 1.12)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_title(metric, fontsize=12)
        if group is not None:
            ax.set_xlabel(group)
        ax.grid(axis="y", alpha=0.3)
        sns.despine(ax=ax)
    for ax in axes[:, 0]:
        ax.set_ylabel("score (0 to 1, higher is better)")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="outside lower center",
        ncols=min(len(methods), 4),
        frameon=False,
        fontsize=10,
    )
    if title:
        fig.suptitle(title, fontsize=14)
    return _finish(fig, path)


__all__ = [
    "STAGE_BOUNDARY_GID",
    "class_imbalance",
    "comparison_bars",
    "confusion_matrix",
    "pr_curve",
    "retrieval_gallery",
    "training_curves",
]


def page_matches(
    queries: Sequence[PathLike],
    matches: Sequence[str],
    scores: Sequence[float],
    path: PathLike | None = None,
) -> Figure:
    """Each row: a query printing, the photograph found for it on a page, and that page with
    the photograph's box (``matches``: region names ``page#xywh=x,y,w,h``)."""

    fig, axes = plt.subplots(len(queries), 3, figsize=(11, 3.8 * len(queries)), squeeze=False)
    for row, q, m, s in zip(axes, queries, matches, scores):
        page, box = split_region(m)
        for ax, im, title in zip(
            row, (load_image(q), load_image(m), load_image(page)),
            (f"query: {_short(os.path.basename(q))}", f"found (cosine {s:.2f})",
             f"on {_short(os.path.basename(page))}"),
        ):  # fmt: skip
            ax.imshow(np.asarray(im.convert("L")), cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        if box is not None:
            row[2].add_patch(Rectangle(box[:2], box[2], box[3], fill=False, color="red", lw=2))
    fig.tight_layout()
    return _finish(fig, path)
