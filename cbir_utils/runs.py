"""Run folders, saved parameters, package versions and seeds (reproducible runs)."""

from __future__ import annotations

import json
import platform
import random
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .io import save_json
from .paths import output_dir

PACKAGES = (
    "torch", "torchvision", "numpy", "pillow", "pandas", "scikit-learn", "scikit-image",
    "matplotlib", "seaborn", "papermill", "efficientnet-lite-pytorch", "opencv-python-headless",
    "faiss-cpu",
)  # fmt: skip


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def notebook_params(namespace: dict[str, Any]) -> dict[str, Any]:
    """The UPPER_SNAKE parameters of a notebook namespace (JSON-serialisable ones)."""
    out = {}
    for k, v in namespace.items():
        if (
            k.isupper()
            and not k.startswith("_")
            and isinstance(v, (str, int, float, bool, list, tuple, type(None)))
        ):
            out[k] = list(v) if isinstance(v, tuple) else v
    return dict(sorted(out.items()))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def start_run(
    notebook: str, run: str, params: dict[str, Any], root: str | Path | None = None
) -> Path:
    """Create ``outputs/<notebook>/<run>/`` and save ``params.json`` and ``versions.json``.

    A run folder belongs to one set of parameters: starting it again with the same
    parameters reuses it (caches, checkpoints); with other parameters it raises
    ``ValueError`` rather than overwrite earlier results.
    """
    if not run or any(c in run for c in "/\\") or run.startswith("."):
        raise ValueError(f"RUN_NAME must be a plain folder name, got {run!r}.")
    out = output_dir(notebook, run, root)
    pfile = out / "params.json"
    if pfile.exists():
        saved = json.loads(pfile.read_text())
        if saved != json.loads(json.dumps(params, default=str)):
            diff = sorted(k for k in set(saved) | set(params) if saved.get(k) != params.get(k))
            raise ValueError(
                f"{out} holds a run with other parameters (differing: {', '.join(diff)}). "
                "Set RUN_NAME to a new name to keep both, or delete that folder to redo it."
            )
    else:
        save_json(pfile, params)
    save_json(
        out / "versions.json",
        {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), **package_versions()},
    )
    return out
