"""Review verdicts: a historian's decisions on proposed reprints, kept as evidence.

Each proposed pair gets one of :data:`VERDICTS` (the same photograph, the same scene in
another shot, not a reprint), in the HTML pages (exported as ``verdicts.csv``) or in a
notebook (:class:`ReviewWidget`), and is imported into an index folder with ``python -m
cbir_utils verdicts import FILE``. The folder's ``verdicts.csv`` is the history, nothing
overwritten; a pair's current verdict is its latest decision, whichever image was the
query; confirmed pairs give scene labels (:func:`labels_from_verdicts`).
"""

from __future__ import annotations

import csv
import html
import io as _io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from cbir_utils.engine import verify
from cbir_utils.errors import CollectionError, InputError, MissingFilesError
from cbir_utils.io import folder_lock, restore, save_csv
from cbir_utils.sources.data import load_image
from cbir_utils.sources.provenance import describe

VERDICTS = {
    "same_photo": "same photograph",
    "same_scene": "same scene, another shot",
    "not_reprint": "not a reprint",
}
CONFIRMED = "same_photo"
VERDICT_COLUMNS = ("query", "candidate", "verdict", "time", "context", "reviewer")
REQUIRED_COLUMNS = ("query", "candidate", "verdict")
VERDICTS_FILE = "verdicts.csv"


def now() -> str:
    """The current UTC time as ISO 8601 (what the pages write too)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in VERDICT_COLUMNS})


@dataclass
class VerdictFile:
    """A verdicts file read and checked: the usable ``rows`` and the ``bad`` ones with their line
    and reason.
    """

    rows: pd.DataFrame
    bad: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["line", "reason"]))


def read_verdicts(path: str | os.PathLike) -> VerdictFile:
    """Read a ``verdicts.csv`` (UTF-8 with or without BOM, or Windows-1252); rows with an unknown
    verdict, an empty name, an unreadable time or a wrong number of cells go to ``bad``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFilesError(f"No verdicts file at {path}.")
    df, ragged = _read_table(path)
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise CollectionError(
            f"{path} is not a verdicts file: it lacks column(s) {missing} (found "
            f"{list(df.columns)}); export it from a contact sheet or search page."
        )
    for c in VERDICT_COLUMNS:
        if c not in df.columns:
            df[c] = ""
    df = df[list(VERDICT_COLUMNS)].apply(lambda s: s.str.strip())
    reasons = []
    for q, c, v, t in zip(df["query"], df["candidate"], df["verdict"], df["time"]):
        if not q or not c:
            reasons.append("an image name is empty")
        elif v not in VERDICTS:
            reasons.append(f"unknown verdict {v!r} (use one of {', '.join(VERDICTS)})")
        elif t and pd.isna(pd.to_datetime(t, errors="coerce", utc=True, format="ISO8601")):
            reasons.append(f"unreadable time {t!r} (use ISO 8601)")
        else:
            reasons.append("")
    reasons = np.asarray(reasons, dtype=object)
    ok = reasons == ""
    bad = pd.DataFrame({"line": df.index.to_numpy()[~ok], "reason": reasons[~ok]})
    bad = pd.concat([bad, ragged]).sort_values("line", kind="stable").reset_index(drop=True)
    return VerdictFile(df[ok].reset_index(drop=True), bad)


def _read_table(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of a CSV as text, indexed by their line in the file, and its ragged rows
    (``line``, ``reason``). UTF-8 (with or without BOM) or, failing that, Windows-1252: the
    encodings spreadsheets write. Guarded cells are restored (:func:`io.restore`)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    reader = csv.reader(_io.StringIO(text, newline=""))
    try:
        header = next(reader)
        rows, lines, ragged = [], [], []
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                ragged.append((reader.line_num, f"{len(row)} cells, the header has {len(header)} "
                               "(a comma in an unquoted cell?)"))  # fmt: skip
                continue
            rows.append([restore(c) for c in row])
            lines.append(reader.line_num)
    except StopIteration:
        raise CollectionError(
            f"{path} is empty; export it from a contact sheet or search page."
        ) from None
    except csv.Error as err:
        raise CollectionError(f"{path} is not a CSV file ({err}).") from None
    df = pd.DataFrame(rows, columns=[restore(c) for c in header], index=lines, dtype=object)
    return df, pd.DataFrame(ragged, columns=["line", "reason"])


def history(folder: str | os.PathLike) -> pd.DataFrame:
    """Every decision imported into the index folder (empty when none), oldest first."""
    f = Path(folder) / VERDICTS_FILE
    return read_verdicts(f).rows if f.is_file() else _empty()


def _pair_keys(df: pd.DataFrame) -> pd.Series:
    a, b = df["query"].astype(str), df["candidate"].astype(str)
    return pd.Series(np.where(a <= b, a + "\n" + b, b + "\n" + a), index=df.index)


def current_verdicts(decisions: pd.DataFrame) -> pd.DataFrame:
    """The latest decision of each pair (the pair (a, b) is the pair (b, a)).

    Later times win; decisions without a time count as older than any timed one, and
    among equal times the later row wins.
    """
    if not len(decisions):
        return _empty()
    df = decisions.copy()
    df["_key"] = _pair_keys(df)
    df["_t"] = pd.to_datetime(df["time"], errors="coerce", utc=True, format="ISO8601")
    df["_row"] = np.arange(len(df))
    df = df.sort_values(["_t", "_row"], na_position="first", kind="stable")
    last = df.drop_duplicates("_key", keep="last").sort_values("_row", kind="stable")
    return last[list(VERDICT_COLUMNS)].reset_index(drop=True)


def about(decisions: pd.DataFrame, names: Iterable[str]) -> tuple[pd.DataFrame, int]:
    """The decisions whose two images are among ``names`` (e.g. the indexed images and a
    page's queries), and how many others were left out (what a page embeds: nothing else)."""
    known = set(names)
    keep = decisions["query"].isin(known) & decisions["candidate"].isin(known)
    return decisions[keep].reset_index(drop=True), int((~keep).sum())


def lookup(decisions: pd.DataFrame) -> dict[tuple[str, str], str]:
    """``{(a, b): verdict}`` of the current verdicts, both orders of each pair."""
    cur = current_verdicts(decisions)
    out: dict[tuple[str, str], str] = {}
    for q, c, v in zip(cur["query"], cur["candidate"], cur["verdict"]):
        out[(q, c)] = out[(c, q)] = v
    return out


@dataclass
class ImportReport:
    """What :func:`import_verdicts` did."""

    path: Path
    added: int = 0
    already: int = 0
    bad: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["line", "reason"]))
    unknown_images: list[str] = field(default_factory=list)
    n_pairs: int = 0

    def summary(self) -> str:
        """One line for the command line."""
        line = f"{self.added} decision(s) added, {self.already} already there"
        if len(self.bad):
            line += f"; {len(self.bad)} row(s) left out (e.g. line {self.bad['line'].iloc[0]}: {self.bad['reason'].iloc[0]})"
        if self.unknown_images:
            line += (
                f"; {len(self.unknown_images)} image name(s) not in the index, kept "
                f"(e.g. {self.unknown_images[0]!r})"
            )
        return line + f". {self.n_pairs} pair(s) judged in {self.path}."


def import_verdicts(
    source: str | os.PathLike, folder: str | os.PathLike, known: Sequence[str] | None = None
) -> ImportReport:
    """Merge a verdicts file into ``folder/verdicts.csv``, each decision once; decisions about
    images not in ``known`` are reported and kept (the image may be added later).
    """
    new = read_verdicts(source)
    with folder_lock(folder, "a `verdicts import`"):  # read, merge, write: one run at a time
        return _merge(new, Path(folder), known)


def _merge(new: VerdictFile, folder: Path, known: Sequence[str] | None) -> ImportReport:
    dest = folder / VERDICTS_FILE
    old = history(folder)
    both = pd.concat([old, new.rows], ignore_index=True)
    key = _pair_keys(both) + "\n" + both["verdict"] + "\n" + both["time"] + "\n" + both["reviewer"]
    keep = ~key.duplicated(keep="first")
    merged = both[keep].reset_index(drop=True)
    report = ImportReport(path=dest, bad=new.bad)
    report.added = int(keep.iloc[len(old) :].sum())
    report.already = len(new.rows) - report.added
    if known is not None:
        names = set(known)
        report.unknown_images = sorted(
            {n for n in pd.concat([new.rows["query"], new.rows["candidate"]]) if n not in names}
        )
    save_csv(dest, merged)
    report.n_pairs = len(current_verdicts(merged))
    return report


def attach(
    table: pd.DataFrame,
    decisions: pd.DataFrame,
    query: str = "query",
    candidate: str = "candidate",
) -> pd.DataFrame:
    """``table`` with a ``verdict`` column: the current verdict of each row's pair, or ``""``."""
    lk = lookup(decisions)
    out = table.copy()
    out["verdict"] = [lk.get((str(q), str(c)), "") for q, c in zip(table[query], table[candidate])]
    return out


@dataclass
class VerdictLabels:
    """Scene labels from confirmed pairs: ``"verified-<n>"`` per group, ``""`` elsewhere;
    ``conflicts`` lists the pairs judged different that confirmations put in one group.
    """

    labels: np.ndarray
    conflicts: pd.DataFrame

    @property
    def n_groups(self) -> int:
        """Number of confirmed groups."""
        return len({s for s in self.labels if s})


def labels_from_verdicts(
    names: Sequence[str], decisions: pd.DataFrame, confirmed: Sequence[str] = (CONFIRMED,)
) -> VerdictLabels:
    """Scene labels of ``names``: images joined by ``confirmed`` verdicts (latest decision of each
    pair) form a group.
    """
    names = [str(n) for n in names]
    pos = {n: i for i, n in enumerate(names)}
    parent = list(range(len(names)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    cur = current_verdicts(decisions)
    joined = np.zeros(len(names), dtype=bool)
    for q, c, v in zip(cur["query"], cur["candidate"], cur["verdict"]):
        if v in confirmed and q in pos and c in pos:
            a, b = find(pos[q]), find(pos[c])
            parent[max(a, b)] = min(a, b)
            joined[pos[q]] = joined[pos[c]] = True
    roots = [find(i) for i in range(len(names))]
    number: dict[int, int] = {}
    labels = np.array([""] * len(names), dtype=object)
    for i, r in enumerate(roots):
        if joined[i]:
            labels[i] = f"verified-{number.setdefault(r, len(number) + 1):03d}"
    rows = [
        {"query": q, "candidate": c, "verdict": v, "group": labels[pos[q]]}
        for q, c, v in zip(cur["query"], cur["candidate"], cur["verdict"])
        if v not in confirmed
        and q in pos
        and c in pos
        and labels[pos[q]]
        and labels[pos[q]] == labels[pos[c]]
    ]
    return VerdictLabels(
        labels, pd.DataFrame(rows, columns=["query", "candidate", "verdict", "group"])
    )


def relabel(collection, verdicts: str | os.PathLike, confirmed: Sequence[str] = (CONFIRMED,)):
    """A copy of ``collection`` whose scenes are the confirmed groups of a verdicts file.

    For fine-tuning on what reviewers confirmed instead of (or without) scene folders:
    images in no confirmed pair become unlabelled. Prints how many groups and images.
    """

    vf = read_verdicts(verdicts)
    vl = labels_from_verdicts(collection.items["relpath"], vf.rows, confirmed)
    if vl.n_groups == 0:
        raise CollectionError(
            f"{verdicts} confirms no pair of images of this collection (names must be the "
            "collection's relative paths)."
        )
    items = collection.items.assign(scene=vl.labels)
    print(
        f"Scene labels from {verdicts}: {vl.n_groups} confirmed group(s), "
        f"{int((vl.labels != '').sum())} of {len(items)} images"
        + (f"; {len(vl.conflicts)} rejected pair(s) inside a group" if len(vl.conflicts) else "")
    )
    return replace(collection, items=items)


def review_query(
    ev,
    items: pd.DataFrame,
    query: int,
    k: int,
    out: str | os.PathLike,
    reviewer: str = "",
    context: str = "notebook",
    draw_matches: bool = True,
) -> ReviewWidget:
    """A :class:`ReviewWidget` for collection row ``query`` and its top ``k`` in evaluation ``ev``."""

    idx, val = ev.top(query, k)
    rec = items.to_dict("records")
    cands = [
        (rec[c]["path"], rec[c]["relpath"], float(s), describe(rec[c])) for c, s in zip(idx, val)
    ]
    q = rec[int(query)]
    return ReviewWidget((q["path"], q["relpath"]), cands, out, reviewer, context, draw_matches)


def append_decision(
    path: str | os.PathLike,
    query: str,
    candidate: str,
    verdict: str,
    context: str = "",
    reviewer: str = "",
) -> pd.DataFrame:
    """Add one decision to a verdicts file (created if needed, rewritten atomically).

    Raises:
        ValueError: ``verdict`` is not one of :data:`VERDICTS`.
    """
    if verdict not in VERDICTS:
        raise InputError(f"Unknown verdict {verdict!r}; use one of {', '.join(VERDICTS)}.")
    path = Path(path)
    row = {
        "query": str(query), "candidate": str(candidate), "verdict": verdict, "time": now(),
        "context": context, "reviewer": reviewer,
    }  # fmt: skip
    with folder_lock(path.parent, "a review in a notebook"):
        old = read_verdicts(path).rows if path.is_file() else _empty()
        df = pd.concat([old, pd.DataFrame([row])], ignore_index=True)
        save_csv(path, df)
    return df


class ReviewWidget:
    """Review one query's candidates in a notebook (ipywidgets), decisions written to ``out``.

    Each candidate is shown with its score, its provenance line and, with ``draw_matches``,
    the verified local-feature matches; three buttons record a verdict with
    :func:`append_decision` into the same file the pages export.
    """

    def __init__(
        self,
        query: tuple[str | os.PathLike, str],
        candidates: Sequence[tuple[str | os.PathLike, str, float, str]],
        out: str | os.PathLike,
        reviewer: str = "",
        context: str = "notebook",
        draw_matches: bool = True,
        thumb_px: int = 220,
    ) -> None:
        import ipywidgets as W

        self.query_path, self.query_name = Path(query[0]), str(query[1])
        self.out, self.reviewer, self.context = Path(out), reviewer, context
        self.status = W.HTML()
        self.buttons: dict[str, dict[str, W.Button]] = {}
        rows = []
        for path, name, score, caption in candidates:
            picture = self._picture(path, draw_matches, thumb_px)
            btns = {}
            for v, label in VERDICTS.items():
                b = W.Button(description=label, layout=W.Layout(width="auto"))
                b.on_click(lambda _b, n=str(name), v=v: self.decide(n, v))
                btns[v] = b
            self.buttons[str(name)] = btns
            info = W.HTML(f"<b>{score:.3f}</b> {_esc(name)}<br><small>{_esc(caption)}</small>")
            rows.append(W.VBox([picture, info, W.HBox(list(btns.values()))]))
        head = W.HTML(f"<b>Query</b> {_esc(self.query_name)} → decisions saved to {_esc(out)}")
        self.widget = W.VBox([head, self._image(self.query_path, thumb_px), *rows, self.status])

    def _image(self, path: Path, px: int):
        import ipywidgets as W

        im = load_image(path)
        im.thumbnail((px, px))
        buf = _io.BytesIO()
        im.save(buf, format="PNG")
        return W.Image(value=buf.getvalue(), format="png")

    def _picture(self, path, draw: bool, px: int):
        if not draw:
            return self._image(Path(path), px)

        import ipywidgets as W
        import matplotlib.pyplot as plt

        match = verify.match_pair(self.query_path, path)
        fig = verify.draw_matches(match, title=f"{match.n_inliers} verified matches")
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=60)
        plt.close(fig)
        return W.Image(value=buf.getvalue(), format="png")

    def decide(self, candidate: str, verdict: str) -> None:
        """Record a verdict (what a button click does) and show it."""
        append_decision(self.out, self.query_name, candidate, verdict, self.context, self.reviewer)
        for v, b in self.buttons[candidate].items():
            b.button_style = "success" if v == verdict else ""
        self.status.value = f"Saved: {_esc(candidate)} → {VERDICTS[verdict]} ({self.out.name})"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _esc(s: object) -> str:
    return html.escape(str(s))
