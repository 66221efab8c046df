"""Errors meant for the user, and showing them as one message instead of a traceback.

Every error this package raises on purpose (a wrong setting, a missing collection, an
unusable file) carries a message that says what is wrong and what to do. In a notebook,
a screen of library frames above that message hides it: :func:`install_notebook_handler`
makes IPython show such errors as the message alone (``%tb`` still prints the full
traceback). Errors of other origins (bugs, library internals) keep their full traceback.

The classes subclass the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``, ``OSError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from types import TracebackType

_PACKAGE_DIR = Path(__file__).resolve().parent
# The handler catches the package's own errors only: a bug keeps its full traceback.
_INSTALLED = False


class CbirError(Exception):
    """Base class of the errors whose message is meant for the user."""


class SettingsError(CbirError, ValueError):
    """A parameter has a wrong type or value (the message names it and what is allowed)."""


class CollectionError(CbirError, ValueError):
    """A collection has no usable image, or its manifest is inconsistent."""


class MissingFilesError(CbirError, FileNotFoundError):
    """A collection folder, a manifest entry or another input file does not exist."""


class ImageDecodeError(CbirError, OSError):
    """One image file cannot be decoded (the message names the file and the reason)."""


class InputError(CbirError, ValueError):
    """An input (an argument, a table, a file's content) cannot be used as given."""


class ToolError(CbirError, RuntimeError):
    """An outside tool or service this package relies on failed (the message says how)."""


class TableColumnsError(CbirError, KeyError):
    """A table given to a plot or report lacks columns it needs (the message names them)."""

    def __str__(self) -> str:  # KeyError quotes its message; this one reads as a sentence
        return str(self.args[0]) if self.args else ""


def is_user_error(exc: BaseException, tb: TracebackType | None = None) -> bool:
    """Whether ``exc`` is a deliberate, user-facing error of this package (a :class:`CbirError`);
    anything else, a bug's ``ValueError`` included, keeps its full traceback.
    """
    return isinstance(exc, CbirError)


def format_user_error(exc: BaseException, tb: TracebackType | None = None) -> str:
    """``"<Type>: <message>"`` followed by where it was raised (file and line)."""
    tb = tb if tb is not None else exc.__traceback__
    where = ""
    frames = traceback.extract_tb(tb) if tb is not None else []
    if frames:
        f = frames[-1]
        try:
            shown = Path(f.filename).resolve().relative_to(_PACKAGE_DIR.parent)
        except ValueError:
            shown = Path(f.filename).name
        where = f"\n(raised in {shown}, line {f.lineno}; run %tb for the full traceback)"
    return f"{type(exc).__name__}: {exc}{where}"


def _handler(shell, etype, value, tb, tb_offset=None):  # IPython custom-exception hook
    if is_user_error(value, tb):
        red, reset = "\x1b[0;31m", "\x1b[0m"
        shell._showtraceback(etype, value, [red + format_user_error(value, tb) + reset])
    else:
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)


def install_notebook_handler() -> bool:
    """In IPython, show this package's user-facing errors as one message (the cell still fails);
    idempotent; off outside IPython or with ``CBIR_FULL_TRACEBACKS`` set. Returns whether active.
    """
    global _INSTALLED
    if os.environ.get("CBIR_FULL_TRACEBACKS", "0") not in ("", "0"):
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not hasattr(shell, "set_custom_exc"):
        return False
    if not _INSTALLED or getattr(shell, "custom_exceptions", ()) != (CbirError,):
        shell.set_custom_exc((CbirError,), _handler)
        _INSTALLED = True
    return True


def cli_main(fn, *args, **kwargs) -> int:
    """Run ``fn(*args, **kwargs)`` for a command line: user errors print one line, exit 2.

    Other exceptions propagate (a bug shows its traceback). Returns ``fn``'s integer
    result, or 0 when it returns something else.
    """
    try:
        result = fn(*args, **kwargs)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
