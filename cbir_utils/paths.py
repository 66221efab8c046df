"""Project paths: the one place that knows where data and outputs live.

Everything is relative to the project root (the folder holding ``pyproject.toml``),
so notebooks, tests and the command line agree wherever they are started from.
Set ``CBIR_PROJECT_ROOT`` to point a run at another checkout, or ``CBIR_OUTPUTS_DIR``
to send outputs elsewhere (the tests do). An installed copy outside a checkout uses the
working folder as its root.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cbir_utils.errors import InputError


def _project_root() -> Path:
    """``CBIR_PROJECT_ROOT``; else the checkout holding this package; else the working folder.

    An installed copy (``pip install .``, the package in site-packages) has no checkout
    around it: its data and outputs then go to the folder it is run from, never into
    site-packages.
    """
    if os.environ.get("CBIR_PROJECT_ROOT"):
        return Path(os.environ["CBIR_PROJECT_ROOT"]).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "cbir_utils").is_dir():
        return checkout
    return Path.cwd().resolve()


PROJECT_ROOT: Path = _project_root()
DATA_DIR: Path = PROJECT_ROOT / "data"
DEMO_DIR: Path = DATA_DIR / "demo"
CHECK_DIR: Path = DATA_DIR / "check"
HARD_DIR: Path = DATA_DIR / "hard"
OUTPUTS_DIR: Path = Path(os.environ.get("CBIR_OUTPUTS_DIR", PROJECT_ROOT / "outputs")).resolve()
NOTEBOOKS_DIR: Path = PROJECT_ROOT / "notebooks"

NOTEBOOK_01 = "01_pretrained_retrieval"
NOTEBOOK_02 = "02_finetune_classification"
NOTEBOOK_03 = "03_finetuned_retrieval"


def resolve(path: str | os.PathLike) -> Path:
    """Return ``path`` as an absolute path, relative paths taken from the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (PROJECT_ROOT / p).resolve()


def output_dir(
    notebook: str, run: str | None = None, root: str | os.PathLike | None = None
) -> Path:
    """Return (and create) ``outputs/<notebook>[/<run>]`` (under ``root`` when given)."""
    base = resolve(root) if root is not None else OUTPUTS_DIR
    d = base / notebook
    if run:
        d = d / run
    d.mkdir(parents=True, exist_ok=True)
    return d


def ensure_outside(path: Path, protected: Path) -> None:
    """Raise ``ValueError`` if ``path`` lies inside ``protected`` (outputs never go into inputs)."""
    path, protected = Path(path).resolve(), Path(protected).resolve()
    if path == protected or protected in path.parents:
        raise InputError(
            f"Refusing to write {path}: it is inside the input collection {protected}."
        )


def finetuned_checkpoint(
    checkpoint: str | os.PathLike = "", run: str = "", which: str = "last"
) -> Path:
    """The checkpoint notebook 03 uses: ``checkpoint`` (relative to the project root) when
    given, else ``which`` (``"last"`` or ``"best"``) of notebook 02's run ``run``.
    """
    if checkpoint:
        return resolve(checkpoint)
    if which not in ("last", "best"):
        raise InputError(f"which must be 'last' or 'best', got {which!r}.")
    return OUTPUTS_DIR / NOTEBOOK_02 / run / "checkpoints" / f"{which}.pt"


# ------------------------------------------------------------------ photographs on pages

_REGION = re.compile(r"^(?P<base>.+)#xywh=(?P<x>\d+),(?P<y>\d+),(?P<w>\d+),(?P<h>\d+)$")


def region_name(base: str | os.PathLike, box: tuple[int, int, int, int]) -> str:
    """``base#xywh=x,y,w,h``: the item name of the photograph in ``box`` (pixels) of a page."""
    return f"{base}#xywh={box[0]},{box[1]},{box[2]},{box[3]}"


def split_region(name: str | os.PathLike) -> tuple[str, tuple[int, int, int, int] | None]:
    """``(page, box)`` of a region item name; ``(name, None)`` for a whole image (also for a
    file whose own name ends like a region)."""
    m = _REGION.match(str(name))
    if not m or os.path.exists(name):
        return str(name), None
    return m["base"], (int(m["x"]), int(m["y"]), int(m["w"]), int(m["h"]))


def image_file(name: str | os.PathLike) -> Path:
    """The file an item is read from: the page's file for a region item."""
    return Path(split_region(name)[0])
