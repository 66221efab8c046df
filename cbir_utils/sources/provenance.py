"""Provenance metadata: where and when each printing appeared.

A collection may say more about each image than its file and scene: which periodical
printed it, on what date and page, its caption, a link to the source (a library's
viewer, a IIIF image). These columns come from a CSV manifest (every column besides
``path`` and ``scene``) or, for a folder collection, from a ``metadata.csv`` at its top
(a ``path`` column relative to the folder, then any columns). They travel with the
images into the index and into every output table, contact sheet and gallery.

Known columns (:data:`PROVENANCE_COLUMNS`) get a meaning; unknown ones are kept as they
are, never dropped. Dates may be ISO (``1916-03-12``), a month (``1916-03``) or a year
(``1916``); a date that cannot be read is reported with its row and treated as unknown.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from cbir_utils.errors import InputError

# Columns with a meaning here, in the order outputs show them.
PROVENANCE_COLUMNS = (
    "periodical",
    "date",
    "page",
    "caption",
    "source_url",
    "iiif_image",
    "region",
)
# Columns that are not metadata (the collection's own, the index's own, outputs' own).
CORE_COLUMNS = frozenset({"relpath", "path", "scene", "sha1"})
METADATA_FILE = "metadata.csv"
DATE_PROBLEM_COLUMNS = ("row", "relpath", "date", "reason")
_DATE_RE = re.compile(r"^\s*(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?\s*$")


class MetadataWarning(UserWarning):
    """Some metadata could not be read (e.g. dates): the rows are listed in the message."""


@dataclass(frozen=True)
class PrintDate:
    """A date as precise as the source gives it: its first possible day and ``precision``
    (``"day"``, ``"month"`` or ``"year"``).
    """

    start: date
    precision: str

    @property
    def label(self) -> str:
        """The date written as precisely as it is known (``1916``, ``1916-03``, ``1916-03-12``)."""
        iso = self.start.isoformat()
        return {"year": iso[:4], "month": iso[:7]}.get(self.precision, iso)

    @property
    def ordinal(self) -> float:
        """A number to sort and plot by (middle of the period for years and months)."""
        days = {"day": 0.0, "month": 14.5, "year": 182.0}[self.precision]
        return self.start.toordinal() + days


def parse_date(text: object) -> PrintDate | None:
    """Read an ISO date, a year-month or a year; ``None`` for an empty value.

    Raises:
        ValueError: The text is not empty and not such a date (the message says why).
    """
    s = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text).strip()
    if not s:
        return None
    m = _DATE_RE.match(s)
    if not m:
        raise InputError("not an ISO date (YYYY-MM-DD), a month (YYYY-MM) or a year (YYYY)")
    y, mo, d = int(m.group(1)), m.group(2), m.group(3)
    try:
        start = date(y, int(mo or 1), int(d or 1))
    except ValueError as err:
        raise InputError(f"no such date ({err})") from None
    return PrintDate(start, "day" if d else "month" if mo else "year")


def is_http(url: object) -> bool:
    """Whether ``url`` is an ``http(s)`` URL: the only links written into pages and CSVs, and
    the only references a remote IIIF document may make."""
    return urlparse(str(url).strip()).scheme.lower() in ("http", "https")


def web_link(row: pd.Series | dict | None) -> str:
    """A printing's link: its ``source_url``, else its ``iiif_image``, if ``http(s)``; else ""."""
    for c in ("source_url", "iiif_image"):
        v = str((row or {}).get(c, "") or "").strip()
        if is_http(v):
            return v
    return ""


def metadata_columns(items: pd.DataFrame) -> list[str]:
    """The metadata columns of a table: known ones first, then the others in their order."""
    extra = [c for c in items.columns if c not in CORE_COLUMNS and not str(c).startswith("_")]
    known = [c for c in PROVENANCE_COLUMNS if c in extra]
    return known + [c for c in extra if c not in known]


def date_problems(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows whose ``date`` cannot be read: ``row``, relpath, date, reason.

    ``row`` is the line in the CSV file when ``frame`` has a ``_row`` column (as the
    collection loader's metadata does), else the position in ``frame``.
    """
    rows = []
    if "date" in frame.columns and len(frame):
        names = frame["relpath"] if "relpath" in frame.columns else frame["path"]
        lines = frame["_row"] if "_row" in frame.columns else range(len(frame))
        for line, name, value in zip(lines, names, frame["date"]):
            try:
                parse_date(value)
            except ValueError as err:
                rows.append({"row": line, "relpath": name, "date": value, "reason": str(err)})
    return pd.DataFrame(rows, columns=list(DATE_PROBLEM_COLUMNS))


def warn_date_problems(problems: pd.DataFrame, source: object, stacklevel: int = 2) -> None:
    """A :class:`MetadataWarning` listing unreadable dates (nothing when there is none)."""
    if not len(problems):
        return
    shown = "\n  ".join(
        f"row {r}: {p}: {d!r} ({why})" for r, p, d, why in problems.head(20).itertuples(index=False)
    )
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    warnings.warn(
        f"{len(problems)} date(s) in {source} cannot be read and are treated as unknown:\n  "
        f"{shown}{more}",
        MetadataWarning,
        stacklevel=stacklevel + 1,
    )


def dates(values: Sequence[object]) -> list[PrintDate | None]:
    """:func:`parse_date` of each value, ``None`` for empty or unreadable ones."""
    out = []
    for v in values:
        try:
            out.append(parse_date(v))
        except ValueError:
            out.append(None)
    return out


def has_dates(items: pd.DataFrame) -> bool:
    """Whether any image has a readable date."""
    return "date" in items.columns and any(d is not None for d in dates(items["date"]))


def add_columns(
    table: pd.DataFrame, items: pd.DataFrame, on: str = "candidate", prefix: str = ""
) -> pd.DataFrame:
    """``table`` with the metadata of the image named in its column ``on`` appended (names
    ``prefix``-ed), same rows and order; ``""`` where an image has none.
    """
    cols = [c for c in metadata_columns(items) if prefix + c not in table.columns]
    if not cols or on not in table.columns:
        return table
    meta = items.drop_duplicates("relpath").set_index("relpath")[cols]
    joined = meta.reindex(table[on].astype(str).to_numpy()).fillna("")
    joined.columns = [prefix + c for c in cols]
    joined.index = table.index
    return pd.concat([table, joined], axis=1)


def describe(row: pd.Series | dict, columns: Sequence[str] | None = None) -> str:
    """A short caption line: ``periodical, date, p. page`` (empty parts left out)."""
    get = row.get
    parts = [str(get("periodical", "") or "").strip(), str(get("date", "") or "").strip()]
    page = str(get("page", "") or "").strip()
    if page:
        parts.append(page if not page.isdigit() else f"p. {page}")
    return ", ".join(p for p in parts if p)


def tooltip(row: pd.Series | dict, columns: Sequence[str]) -> str:
    """Every metadata value of an image, one ``name: value`` per line (for hover text)."""
    lines = []
    for c in columns:
        v = str(row.get(c, "") or "").strip()
        if v:
            lines.append(f"{c}: {v if len(v) <= 200 else v[:199] + '…'}")
    return "\n".join(lines)
