"""Helpers and options shared by the commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from cbir_utils import config, paths, runs
from cbir_utils.engine import verify
from cbir_utils.engine.index import Index, _local_cache, resolve_index
from cbir_utils.errors import InputError, MissingFilesError
from cbir_utils.io import save_json
from cbir_utils.sources.data import IMAGE_EXTENSIONS, split_for

# Defaults shared with notebook 01's parameters cell (tests/test_cli.py checks they agree);
# the pipeline's (IMAGE_SIZE, SCALES, WHITEN_DIM...) are PipelineConfig's (cbir_utils.config).
DEFAULTS = {
    "BACKBONE": config.BACKBONE,
    "WEIGHTS": config.WEIGHTS,
    **config.defaults(),
    "BATCH_SIZE": 32,
    "NUM_WORKERS": 0,
    "TOP_K": 9,
    "KS": [1, 5, 10],
    "THRESHOLD": None,
    "SPLIT_SEED": 0,
    "VAL_FRAC": 0.2,
    "TEST_FRAC": 0.2,
    "HELDOUT_FRAC": 0.3,
    "SPLIT_FILE": "",
    "PAGES": False,
}


def say(args, *msg) -> None:
    if not getattr(args, "quiet", False):
        print(*msg, file=sys.stderr)


def show_progress(args) -> bool:
    return not getattr(args, "quiet", False)


def positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return v


def image_files(targets: Sequence[str]) -> list[Path]:
    """Image files named, or found recursively in named folders (sorted)."""
    out: list[Path] = []
    for t in targets:
        p = Path(t).expanduser()
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in IMAGE_EXTENSIONS
                and not f.name.startswith(".")
            )
            if not found:
                raise MissingFilesError(f"No image files in the folder {p}.")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise MissingFilesError(f"No such image or folder: {p}")
    return out


def open_index(name: str):
    folder = resolve_index(name)
    return Index.load(folder), folder


def say_left_out(args, n: int) -> None:
    if n:
        say(args, f"{n} imported decision(s) name an image that is not in this index; "
             "they are not shown on the page (`verdicts list` shows them all).")  # fmt: skip


def run_dir(kind: str, index, args, params: dict) -> Path:
    if args.out:  # the user's folder: its files are replaced, params.json says by what
        out = Path(args.out).expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        save_json(out / "params.json", params)
        return out
    run = args.run_name or index.name
    try:
        return runs.start_run(kind, run, params)
    except ValueError as err:  # reword the notebooks' advice for the command line
        raise InputError(
            str(err).replace("Set RUN_NAME to a new name", "Pass --run-name NAME (or --out DIR)")
        ) from None


def split_of(index, args):
    split, _ = split_for(
        index.collection(),
        args.split_seed,
        args.val_frac,
        args.test_frac,
        args.heldout_frac,
        args.split_file,
    )
    return split


def add_split_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("split (the notebooks' shared train/val/test split)")
    for name in ("split_seed", "val_frac", "test_frac", "heldout_frac", "split_file"):
        add_param(g, name)


def add_output_args(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--out", help=f"output folder (default outputs/{kind}/<run name>/)")
    p.add_argument(
        "--run-name",
        default="",
        help=f"run folder name under outputs/{kind}/ (default: the index name); "
        "a run with other parameters needs a new name",
    )


def add_param(group, name: str, note: str = "", help: str | None = None, **kw) -> None:
    """The option of a notebook parameter: its default is the notebooks' (:data:`DEFAULTS`),
    its help and check are :data:`cbir_utils.config.PARAM_SPECS`' (the pipeline's come from
    :class:`cbir_utils.config.PipelineConfig`), checked by ``config.coerce_param``."""
    spec = config.PARAM_SPECS[name.upper()]
    flag = "--" + name.lower().replace("_", "-")
    kw.setdefault("default", DEFAULTS.get(name.upper()))
    shown = kw["default"] not in (None, "")  # else the help says what happens
    text = f"{help or spec.help}{note}" + (" (default %(default)s)" if shown else "")
    if spec.kind == "bool":
        group.add_argument(flag, action=argparse.BooleanOptionalAction, help=text, **kw)
        return

    def check(value: str):
        try:
            return config.coerce_param("the value", value, spec)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    check.__name__ = name.lower()
    choices = spec.choices
    group.add_argument(flag, type=check, choices=choices, help=text, **kw)


def add_extract_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("descriptor extraction")
    add_param(g, "batch_size")
    add_param(g, "num_workers")
    g.add_argument(
        "--cache-dir",
        default=None,
        help="descriptor cache, keyed by file content and model (default outputs/cache, shared with the notebooks)",
    )


def add_rerank_arg(p: argparse.ArgumentParser, note: str) -> None:
    p.add_argument(
        "--rerank-top-n",
        type=non_negative_int,
        default=None,
        help="candidates per query verified by local features (SIFT + RANSAC): verified "
        f"printings rise, {note}; 0 = cosine only (default: the index's setting, "
        f"{DEFAULTS['RERANK_TOP_N']} unless it was built otherwise)",
    )


def local_store():
    return verify.LocalFeatureStore(cache_dir=_local_cache())


def profile(name: str, options: set[str]) -> dict:
    """The values of the profile ``notebooks/params/<name>.yaml`` that are among ``options``
    (a command's), checked as the notebooks' parameters are; ``{}`` for no name."""
    if not name:
        return {}
    folder = paths.NOTEBOOKS_DIR / "params"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise InputError(f"No profile {name!r} in {folder}; choose one of {names}.")
    out = {}
    for key, value in (yaml.safe_load(path.read_text()) or {}).items():
        if key.lower() in options and key in config.PARAM_SPECS:
            out[key.lower()] = config.coerce_param(key, value, config.PARAM_SPECS[key])
    return out
