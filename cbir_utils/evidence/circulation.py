"""Circulation: where and when one photograph appeared, from its group of reprints.

For a duplicate group (or a query and its confirmed reprints) the reprint list gives each
printing's periodical, date, page, position on the page (of a photograph found on a page),
score, verdict and link, sorted by date with the first appearance marked
(:func:`reprint_list`; :func:`circulation_table` for every group, the ``circulation.csv`` of a
run). The timeline (:func:`timeline_figure`) draws it: date on the
x axis, one row per periodical, a thumbnail per printing, the first appearance framed.
Collections without dates get the list without the timeline, and are told so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import date

import numpy as np
import pandas as pd

from cbir_utils.io import save_figure
from cbir_utils.paths import split_region
from cbir_utils.sources import provenance
from cbir_utils.sources.data import load_image

REPRINT_COLUMNS = (
    "image", "periodical", "date", "page", "position", "score", "verdict", "link", "first"
)  # fmt: skip
FIRST_COLOR = "#d73027"
NO_DATES = "No dates in the metadata: the reprint list is in file order and there is no timeline."


def reprint_list(
    members: Sequence[int],
    names: Sequence[str],
    items: pd.DataFrame | None,
    scores: Sequence[float] | None = None,
    verdicts: dict[tuple[str, str], str] | None = None,
    reference: int | None = None,
) -> pd.DataFrame:
    """The printings ``members`` of one photograph (:data:`REPRINT_COLUMNS` and ``row``), sorted by
    date with undated ones last and ``first`` marking the earliest; verdicts are those about
    ``reference`` (default the first member).
    """
    members = [int(m) for m in members]
    ref = members[0] if reference is None and members else reference
    records = items.to_dict("records") if items is not None else [{}] * len(names)
    when = provenance.dates([records[m].get("date", "") for m in members])
    rows = []
    for m, d in zip(members, when):
        r = records[m]
        v = ""
        if verdicts is not None and ref is not None and m != ref:
            v = verdicts.get((str(names[ref]), str(names[m])), "")
        rows.append(
            {
                "image": str(names[m]),
                "periodical": str(r.get("periodical", "") or ""),
                "date": d.label if d is not None else str(r.get("date", "") or ""),
                "page": str(r.get("page", "") or ""),
                "position": _position(str(names[m])),
                "score": round(float(scores[m]), 6) if scores is not None else np.nan,
                "verdict": "reference" if m == ref and verdicts is not None else v,
                "link": provenance.web_link(r),
                "first": False,
                "row": m,
                "_t": d.ordinal if d is not None else np.inf,
            }
        )
    df = pd.DataFrame(rows, columns=[*REPRINT_COLUMNS, "row", "_t"])
    if len(df):
        df = df.sort_values(["_t"], kind="stable").reset_index(drop=True)
        dated = np.isfinite(df["_t"])
        if dated.any():
            df.loc[dated & (df["_t"] == df.loc[dated, "_t"].min()), "first"] = True
    return df.drop(columns="_t")


def _position(name: str) -> str:
    """Where on its page a photograph found on a page is (``x,y,w,h`` in the page's pixels)."""
    box = split_region(name)[1]
    return ",".join(map(str, box)) if box is not None else ""


def circulation_table(
    group_members: Sequence[Sequence[int]],
    names: Sequence[str],
    items: pd.DataFrame | None,
    scores: Sequence[float] | None = None,
    verdicts: dict[tuple[str, str], str] | None = None,
) -> pd.DataFrame:
    """:func:`reprint_list` of every group, one after the other, with a ``group`` column (1, 2...)."""
    parts = []
    for g, members in enumerate(group_members, start=1):
        df = reprint_list(members, names, items, scores, verdicts)
        df.insert(0, "group", g)
        parts.append(df)
    if not parts:
        return pd.DataFrame(columns=["group", *REPRINT_COLUMNS, "row"])
    return pd.concat(parts, ignore_index=True)


def timeline_figure(
    reprints: pd.DataFrame,
    paths: Sequence[str | os.PathLike],
    path: str | os.PathLike | None = None,
    title: str | None = None,
    thumb_px: int = 64,
):
    """How one photograph travelled: date on x, one row per periodical, thumbnails as marks, the
    first appearance framed in red, undated printings listed under the axis; ``None`` when no
    printing has a readable date.
    """
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    when = provenance.dates(reprints["date"])
    dated = [i for i, d in enumerate(when) if d is not None]
    if not dated:
        return None
    rows = reprints.iloc[dated]
    titles = [p or "(periodical unknown)" for p in rows["periodical"]]
    order = list(dict.fromkeys(titles))  # by first appearance
    x = [date.fromordinal(int(when[i].ordinal)) for i in dated]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(dated) + 3), 1.0 + 0.75 * len(order)))
    span = (max(x) - min(x)).days or 30
    pad = max(15, span * 0.06)
    ax.set_xlim(mdates.date2num(min(x)) - pad, mdates.date2num(max(x)) + 2.5 * pad)
    ax.set_ylim(-0.7, len(order) - 0.3)
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    for (_, r), t, d in zip(rows.iterrows(), titles, x):
        y = order.index(t)
        first = bool(r["first"])
        try:
            im = load_image(paths[int(r["row"])])
            im.thumbnail((thumb_px, thumb_px))
            box = OffsetImage(np.asarray(im), zoom=0.75, cmap="gray")
            ab = AnnotationBbox(
                box, (mdates.date2num(d), y), frameon=True, pad=0.15,
                bboxprops={"edgecolor": FIRST_COLOR if first else "#555",
                           "linewidth": 3 if first else 0.8},
            )  # fmt: skip
            ax.add_artist(ab)
        except (OSError, ValueError):
            ax.plot(mdates.date2num(d), y, "o", color=FIRST_COLOR if first else "#555")
        label = r["date"] + (f", p. {r['page']}" if r["page"] else "")
        ax.annotate(
            ("first: " if first else "") + label, (mdates.date2num(d), y), xytext=(30, 0),
            textcoords="offset points", ha="left", va="center", fontsize=7,
            color=FIRST_COLOR if first else "#333", fontweight="bold" if first else "normal",
        )  # fmt: skip
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m"))
    fig.autofmt_xdate()
    undated = len(reprints) - len(dated)
    if undated:
        ax.set_xlabel(f"{undated} printing(s) without a date not shown")
    ax.set_title(title or f"Circulation: {len(dated)} dated printing(s)", fontsize=11)
    fig.tight_layout()
    if path is not None:
        save_figure(path, fig)
    return fig
