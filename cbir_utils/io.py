"""Output writing: atomic (a killed run never leaves a half-written file) and, for CSVs,
spreadsheet-safe (a cell from the data is never a live formula)."""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cbir_utils.errors import InputError

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_FILE = ".lock"
LOCK_WAIT = 30.0
"""Seconds a run waits for another one to leave a folder before it stops."""


def _umask() -> int:
    """The process's umask (read without changing it where the system says it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and put back
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """``write(tmp)`` writes a temporary file beside ``path``, then it is renamed into place
    (a reader never sees a half-written file; a failed write leaves the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; outputs honour the umask
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``folder``'s lock while ``what`` (e.g. "an `index` run") writes into it.

    A second run waits up to :data:`LOCK_WAIT` seconds, then stops with a message naming
    the run that holds the folder: two runs never interleave their writes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held until the end
    try:
        deadline = time.monotonic() + LOCK_WAIT
        while fcntl is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "another run"
                    raise InputError(
                        f"{folder} is being written by {holder}; wait until it ends, then "
                        "run this again."
                    ) from None
                time.sleep(0.2)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        fh.seek(0)
        fh.truncate()
        fh.write(f"{what} (process {os.getpid()}, since {now})")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    return atomic_write(path, lambda t: Path(t).write_text(text, encoding="utf-8"))


def atomic_create_text(path: str | os.PathLike, text: str) -> bool:
    """Create ``path`` with ``text`` only if it does not exist, atomically (a hard link never
    replaces a file: of two processes exactly one succeeds); returns whether this call did.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # file systems without hard links: exclusive create, then fill
            try:
                with open(path, "x", encoding="utf-8") as fh:
                    fh.write(text)
            except FileExistsError:
                return False
        return True
    finally:
        os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    return atomic_write(path, lambda t: Path(t).write_bytes(data))


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Save ``obj`` as indented JSON (numpy scalars converted)."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return atomic_write_text(path, json.dumps(obj, indent=2, default=default, ensure_ascii=False))


_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def differing(saved: dict, new: dict) -> list[str]:
    """The keys whose values differ between a saved record and a new one, sorted."""
    return sorted(k for k in set(saved) | set(new) if saved.get(k) != new.get(k))


def neutralise(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (it starts with ``=``, ``+``, ``-``,
    ``@``, tab or carriage return, as OWASP lists) gets a leading apostrophe; so does one
    that already starts with apostrophes before such a character, so that :func:`restore`
    gives back the exact value. Numbers (also as text, e.g. ``-1.5``) stay numbers."""
    if isinstance(value, str) and _FORMULA.match(value) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def restore(value: Any) -> Any:
    """The value :func:`neutralise` was given (one leading apostrophe of a guarded cell off)."""
    if isinstance(value, str) and value[:1] == "'" and _FORMULA.match(value, 1):
        return value[1:]
    return value


def _text_columns(df: pd.DataFrame) -> list[int]:
    return [
        c
        for c in range(df.shape[1])
        if df.iloc[:, c].dtype == object or pd.api.types.is_string_dtype(df.iloc[:, c].dtype)
    ]


def safe_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every text cell (and column name) :func:`neutralise`-d; numbers untouched."""
    out = df.rename(columns=neutralise)
    for c in _text_columns(out):
        out.isetitem(c, out.iloc[:, c].map(neutralise))
    return out


def _csv_args(df: pd.DataFrame, kwargs: dict) -> dict:
    """No index unless asked; text quoted when a cell holds a bare carriage return (the
    writer quotes only cells with a ``\n``, and an unquoted ``\r`` splits the row) and in
    a one-column table (an empty or blank cell would be a blank line, which readers skip)."""
    kwargs.setdefault("index", False)
    text = [df.iloc[:, c] for c in _text_columns(df)]
    one = df.shape[1] == 1 and not kwargs["index"]
    if one or any(col.map(lambda v: isinstance(v, str) and "\r" in v).any() for col in text):
        kwargs.setdefault("quoting", csv.QUOTE_NONNUMERIC)
    return kwargs


def csv_text(df: pd.DataFrame, **kwargs: Any) -> str:
    """``df`` as spreadsheet-safe CSV text (no index unless asked), e.g. for stdout."""
    safe = safe_frame(df)
    return safe.to_csv(**_csv_args(safe, kwargs))


def save_csv(path: str | os.PathLike, df: pd.DataFrame, **kwargs: Any) -> Path:
    """Save a data frame as spreadsheet-safe CSV (:func:`safe_frame`), atomically; no index
    unless asked. :func:`read_csv` reads it back exactly."""
    safe = safe_frame(df)
    kwargs = _csv_args(safe, kwargs)
    return atomic_write(path, lambda t: safe.to_csv(t, **kwargs))


def read_csv(path_or_buffer: Any, **kwargs: Any) -> pd.DataFrame:
    """Read a CSV as text (no NA guessing, BOM tolerated), guarded cells :func:`restore`-d:
    the exact frame :func:`save_csv` wrote, or a spreadsheet's export of it."""
    kwargs = {"dtype": str, "keep_default_na": False, "encoding": "utf-8-sig", **kwargs}
    df = pd.read_csv(path_or_buffer, **kwargs)
    df = df.rename(columns=restore)
    for c in _text_columns(df):
        df.isetitem(c, df.iloc[:, c].map(restore))
    return df


def save_npy(path: str | os.PathLike, arr: np.ndarray) -> Path:
    """Save a numpy array atomically."""

    def write(t: str) -> None:
        with open(t, "wb") as fh:
            np.save(fh, arr)

    return atomic_write(path, write)


def save_figure(path: str | os.PathLike, fig, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    return atomic_write(path, lambda t: fig.savefig(t, dpi=dpi, bbox_inches="tight", format="png"))


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table (no extra dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
