"""Helpers of the robustness tests: folder snapshots (nothing changed) and thread control."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: content hash, size, mode and mtime."""
    out = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        st = os.stat(dirpath)
        out[os.path.relpath(dirpath, root) + "/"] = ("dir", st.st_mode, st.st_mtime_ns)
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            out[os.path.relpath(p, root)] = (digest, st.st_size, st.st_mode, st.st_mtime_ns)
    return out


def compare(before: dict, after: dict) -> dict[str, list[str]]:
    return {
        "lost": sorted(set(before) - set(after)),
        "added": sorted(set(after) - set(before)),
        "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k]),
    }


@contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread for the block (much faster on an oversubscribed CI machine).

    Runs compared bit for bit must use the same thread count; the previous count is restored.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
