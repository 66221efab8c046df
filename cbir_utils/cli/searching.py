"""`search`: an index queried with images, regions or pages."""

from __future__ import annotations

import sys
from pathlib import Path

from cbir_utils.cli.common import (
    add_extract_args,
    add_param,
    add_rerank_arg,
    image_files,
    local_store,
    open_index,
    say,
    say_left_out,
    show_progress,
)
from cbir_utils.engine import models, pages
from cbir_utils.engine.index import parse_box
from cbir_utils.errors import InputError
from cbir_utils.evidence import contact_sheet, review
from cbir_utils.io import csv_text, save_csv
from cbir_utils.paths import region_name


def search_parser(sub, common, fmt) -> None:
    """The options of `search`."""
    p = sub.add_parser(
        "search",
        parents=[common], help="top-k matches of an image, a folder of images, or a region",
                       description="Search an index with images that need not be in it. The "
                       "collection is not re-embedded: only the queries are. Prints CSV "
                       "(query, rank, candidate, score, scene, path) unless --out is given.")  # fmt: skip
    p.add_argument("index", help="index folder or name")
    p.add_argument("query", help="a query image, or a folder of query images")
    add_param(p, "top_k", " (as the study)")
    p.add_argument(
        "--box",
        default="",
        help="search with a region of the image only: x0,y0,x1,y1 in pixels (origin top left)",
    )
    add_param(
        p, "pages", help="the query images are pages: each photograph found on them is searched"
    )
    p.add_argument(
        "--include-self",
        action="store_true",
        help="keep the query's own file in the results when it is indexed",
    )
    add_rerank_arg(p, "an 'inliers' column says why")
    p.add_argument("--out", default="", help="CSV file to write (default: print to the terminal)")
    p.add_argument(
        "--html",
        default="",
        help="also write a self-contained review page: thumbnails, provenance and the three "
        "verdict buttons per candidate, exported as verdicts.csv",
    )
    add_extract_args(p)
    p.set_defaults(func=cmd_search)


def cmd_search(args) -> int:
    index, folder = open_index(args.index)
    files = image_files([args.query])
    if args.pages:  # each photograph found on the query pages is a query
        page_cache = args.cache_dir and Path(args.cache_dir) / "pages"
        found = {f: pages.detect_cached(f, page_cache) for f in files}
        for f in (f for f, boxes in found.items() if not boxes):
            say(args, f"{f}: {pages.NO_PHOTO.replace('indexed', 'searched')}.")
        files = [Path(region_name(f, b)) for f, boxes in found.items() for b in boxes]
        if not files:
            raise InputError(f"No photograph found on the page(s) of {args.query}.")
    box = parse_box(args.box) if args.box else None
    if box is not None and len(files) != 1:
        raise InputError("--box needs a single query image, not a folder.")
    store = local_store()
    fitted = index.fitted(store, show_progress(args))
    if args.rerank_top_n is not None:
        fitted = fitted.with_rerank(args.rerank_top_n)
    digests = [models.file_digest(p) for p in files]  # each query file read and hashed once
    table = index.search(
        files,
        k=args.top_k,
        box=box,
        exclude_self=not args.include_self,
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=show_progress(args),
        store=store,
        fitted=fitted,
        digests=digests,
    )
    if box is not None:
        table.insert(1, "box", ",".join(f"{v:g}" for v in box))
    decisions = review.history(folder)
    names = index.query_names(files, digests)
    table = review.attach(table.assign(_q=table["query"].map(names)), decisions, "_q")
    table = table.drop(columns="_q")
    if args.html:
        shown, left = review.about(decisions, [*index.relpaths, *names.values()])
        page = contact_sheet.search_results_html(
            table, Path(args.html).expanduser(), query_names=names,
            title=f"Search results: {index.name}", verdicts=shown, store=index.name,
            notes=[f"Index {index.name}: {index.meta.get('backbone')}; top {args.top_k}."],
            progress=show_progress(args), items=index.items,
        )  # fmt: skip
        say(args, f"Review page written: {page} (judge the candidates, then export verdicts.csv)")
        say_left_out(args, left)
    if args.out:
        save_csv(Path(args.out).expanduser(), table)
        say(
            args,
            f"{len(files)} quer{'y' if len(files) == 1 else 'ies'}; top {args.top_k} written to {args.out}",
        )
    elif not args.html:
        sys.stdout.write(csv_text(table))
    return 0
