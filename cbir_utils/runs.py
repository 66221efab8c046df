"""Run folders, saved parameters, package versions and seeds; notebook parameters checked."""

from __future__ import annotations

import ast
import difflib
import json
import os
import platform
import random
import sys
import warnings
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from cbir_utils import paths as project
from cbir_utils.config import PARAM_SPECS, Param, coerce_param
from cbir_utils.engine import models
from cbir_utils.errors import SettingsError, install_notebook_handler
from cbir_utils.io import atomic_create_text, differing, save_json
from cbir_utils.paths import output_dir, resolve

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


def notebook_defaults(notebook: str | os.PathLike) -> dict[str, Any]:
    """The literal defaults of a notebook's ``parameters`` cell (a name in ``notebooks/`` or a path)."""

    import nbformat

    path = Path(notebook)
    if path.suffix != ".ipynb":
        path = project.NOTEBOOKS_DIR / f"{notebook}.ipynb"
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(cell.source).body
        if isinstance(node, ast.Assign)
    }


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _json_default(o: Any) -> Any:
    """As :func:`cbir_utils.io.save_json`: numpy values as numbers/lists, the rest as text."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def start_run(
    notebook: str, run: str, params: dict[str, Any], root: str | Path | None = None
) -> Path:
    """Create ``outputs/<notebook>/<run>/`` with ``params.json`` and ``versions.json``.

    The same parameters reuse the folder (caches, checkpoints); others are an error rather
    than an overwrite. ``params.json`` is created exclusively, so two runs started at once
    cannot both claim it; a change of package versions is warned about.
    """
    install_notebook_handler()
    if not isinstance(run, str) or not run or any(c in run for c in "/\\") or run.startswith("."):
        raise SettingsError(f"RUN_NAME must be a plain folder name, got {run!r}.")
    out = output_dir(notebook, run, root)
    pfile = out / "params.json"
    text = json.dumps(params, indent=2, default=_json_default, ensure_ascii=False)
    if not atomic_create_text(pfile, text):
        saved, new = json.loads(pfile.read_text(encoding="utf-8")), json.loads(text)
        if saved != new:
            diff = differing(saved, new)
            shown = "; ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in diff[:8])
            raise SettingsError(
                f"{out} holds a run with other parameters (differing: {', '.join(diff)}; "
                f"{shown}). Set RUN_NAME to a new name to keep both, or delete that folder to "
                "redo it. Nothing was overwritten."
            )
    vfile = out / "versions.json"
    versions = package_versions()
    if vfile.exists():
        try:
            before = json.loads(vfile.read_text(encoding="utf-8"))
        except ValueError:
            before = {}
        changed = sorted(k for k in versions if before.get(k) not in (None, versions[k]))
        if changed:
            warnings.warn(
                f"{out} was last run with other package versions ("
                + ", ".join(f"{k} {before[k]} -> {versions[k]}" for k in changed)
                + "); results computed before and after may differ.",
                stacklevel=2,
            )
    save_json(
        vfile,
        {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), **versions},
    )
    return out


# --------------------------------------------------------------------------- parameters


def check_params(
    params: dict[str, Any], specs: dict[str, Param] | None = None, check_paths: bool = True
) -> dict[str, Any]:
    """Check and convert a notebook's parameters, every problem in one message.

    Known names are converted to their type (papermill passes strings); an unknown name is
    warned about with the closest known one. Then together: ``STAGE_LRS`` per stage, ``KS``
    without duplicates, ``RUN_NAME`` a plain folder name and, with ``check_paths``, the paths
    and weights files exist and fit.
    """
    install_notebook_handler()
    specs = PARAM_SPECS if specs is None else specs
    out: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in params.items():
        spec = specs.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(specs), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.warn(f"Unknown parameter {name}{hint}; it is not used.", stacklevel=2)
            out[name] = value
            continue
        try:
            out[name] = coerce_param(name, value, spec)
        except SettingsError as err:
            problems.append(str(err))
    if not problems:
        problems = _cross_check(out, check_paths)
    if problems:
        if len(problems) == 1:
            raise SettingsError(problems[0])
        raise SettingsError(f"{len(problems)} parameters are wrong:\n  " + "\n  ".join(problems))
    return out


def _cross_check(p: dict[str, Any], check_paths: bool) -> list[str]:
    problems = []
    if "STAGES" in p and p.get("STAGE_LRS") is not None and len(p["STAGE_LRS"]) != len(p["STAGES"]):
        problems.append(
            f"STAGE_LRS has {len(p['STAGE_LRS'])} value(s) but STAGES has {len(p['STAGES'])} "
            "stage(s); give one learning rate per stage, or None."
        )
    if p.get("GRAPH") and not p.get("RERANK", False):
        problems.append("GRAPH=True needs RERANK=True (the graph is made of verifications).")
    if "SCALES" in p and not p["SCALES"]:
        problems.append("SCALES must hold at least one scale, e.g. [1.0].")
    if "KS" in p and len(set(p["KS"])) != len(p["KS"]):
        problems.append(f"KS has duplicate cut-offs: {p['KS']}.")
    run = p.get("RUN_NAME")
    if run is not None and (not run or any(c in run for c in "/\\") or run.startswith(".")):
        problems.append(f"RUN_NAME must be a plain folder name, got {run!r}.")
    if not check_paths:
        return problems
    if "DATA_DIR" in p and not p.get("BUILD_DEMO", False) and not resolve(p["DATA_DIR"]).exists():
        problems.append(
            f"DATA_DIR {p['DATA_DIR']!r} does not exist (looked for {resolve(p['DATA_DIR'])}; "
            "relative paths are taken from the project root). Point it to a folder with one "
            "sub-folder per scene or to a CSV manifest, or set BUILD_DEMO=True for the demo."
        )
    if p.get("CHECKPOINT") and not resolve(p["CHECKPOINT"]).is_file():
        problems.append(
            f"CHECKPOINT {p['CHECKPOINT']!r} does not exist (looked for "
            f"{resolve(p['CHECKPOINT'])}). Give the path of a checkpoint written by notebook "
            "02, or leave it empty to use FINETUNE_RUN's best.pt."
        )
    weights = p.get("WEIGHTS")
    backbone = p.get("BACKBONE", "")

    if backbone in models.BACKBONES and models.family_of(backbone) in models.FILE_FAMILIES:
        try:  # the SSCD model files: installed package or a local file
            models.weights_file(backbone, weights or "default")
        except (models.WeightsUnavailableError, FileNotFoundError) as err:
            problems.append(str(err))
    elif (
        weights is not None
        and weights.strip().lower() not in models.SHIPPED_WEIGHTS + models.RANDOM_WEIGHTS
    ):
        try:
            check_weights_file(backbone, weights)
        except SettingsError as err:
            problems.append(str(err))
    return problems


def _guess_backbone(keys: list[str]) -> str | None:
    """Which backbone a state dict's key names belong to (``None`` when unsure)."""
    ks = set(keys)
    if any(k.startswith("_blocks.") for k in ks) and "_conv_stem.weight" in ks:
        return "efficientnet_lite0"
    if "layer1.0.conv1.weight" in ks:
        if any(k.startswith("layer3.35.") for k in ks):
            return "resnet152"
        if "layer1.0.conv3.weight" in ks and any(k.startswith("layer3.5.") for k in ks):
            return "resnet50" if not any(k.startswith("layer3.6.") for k in ks) else "resnet101"
        if "layer1.0.conv3.weight" not in ks:
            return "resnet18" if not any(k.startswith("layer1.2.") for k in ks) else "resnet34"
        return "a ResNet"
    return None


def check_weights_file(backbone: str, weights: str | os.PathLike) -> Path:
    """Check that a local weights file exists and fits ``backbone`` (loaded into a network on
    PyTorch's ``meta`` device: no memory); a mismatch says which backbone it seems to be for.
    """
    import torch

    path = resolve(weights)
    if not path.is_file():
        raise SettingsError(
            f"WEIGHTS file {str(weights)!r} does not exist (looked for {path}). Use "
            "'imagenet' (download once, or the file shipped for efficientnet_lite0), 'none' "
            "for random initialisation, or the path of a local weights file."
        )
    if backbone not in models.BACKBONES:
        raise SettingsError(
            f"BACKBONE must be one of {', '.join(map(repr, models.BACKBONES))}; got {backbone!r}."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.device("meta"):
                models.build_model(backbone, weights=str(path))
        return path
    except models.WeightsFileError as err:  # unsafe, or not a PyTorch file at all
        raise SettingsError(f"WEIGHTS file {path}: {err}") from err
    except ValueError as err:  # a cbir_utils checkpoint given as backbone weights
        raise SettingsError(
            f"WEIGHTS {path} is a fine-tuned checkpoint, not backbone weights: use it as "
            "CHECKPOINT in notebook 03, or give ImageNet weights of the backbone."
        ) from err
    except RuntimeError as err:
        try:
            state = models.safe_load(path)
        except Exception:
            raise SettingsError(
                f"WEIGHTS file {path} is not a PyTorch weights file ({str(err)[:200]})."
            ) from err
        state = state.get("state_dict", state) if isinstance(state, dict) else {}
        guess = _guess_backbone([str(k) for k in state])
        it = f"; it looks like weights of {guess}" if guess else ""
        raise SettingsError(
            f"WEIGHTS file {path} does not fit BACKBONE {backbone!r}{it}. "
            f"Set BACKBONE to the network the file was made for, or give {backbone} weights."
        ) from err
    except Exception as err:  # unpickling errors of files that are not PyTorch files
        raise SettingsError(
            f"WEIGHTS file {path} is not a PyTorch weights file "
            f"({type(err).__name__}: {str(err)[:200]})."
        ) from err
