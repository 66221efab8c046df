"""Atomic output writing: a killed run never leaves a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def atomic_write(path: str | os.PathLike, write) -> Path:
    """``write(tmp)`` writes a temporary file beside ``path``, then it is renamed into place
    (a reader never sees a half-written file; a failed write leaves the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    return atomic_write(path, lambda t: Path(t).write_text(text, encoding="utf-8"))


def atomic_create_text(path: str | os.PathLike, text: str) -> bool:
    """Create ``path`` with ``text`` only if it does not exist yet, atomically.

    The file appears complete or not at all, and of two processes creating it at
    once exactly one succeeds (a hard link never replaces an existing file).

    Returns:
        True if this call created the file, False if it already existed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


def save_csv(path: str | os.PathLike, df: pd.DataFrame, **kwargs: Any) -> Path:
    """Save a data frame as CSV atomically (no index unless asked)."""
    kwargs.setdefault("index", False)
    return atomic_write(path, lambda t: df.to_csv(t, **kwargs))


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
