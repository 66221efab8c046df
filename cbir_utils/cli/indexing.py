"""`index` (a collection into a saved index, shards, graph shards) and `add`."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from cbir_utils import paths as project
from cbir_utils.cli.common import (
    DEFAULTS,
    add_extract_args,
    add_param,
    image_files,
    local_store,
    non_negative_int,
    open_index,
    positive_int,
    say,
    show_progress,
)
from cbir_utils.engine import features, graph_shards, pages
from cbir_utils.engine.index import Index, load_model, model_settings, pipeline_config, shard_scales
from cbir_utils.engine.models import preprocess_from_meta
from cbir_utils.errors import InputError
from cbir_utils.io import differing, folder_lock
from cbir_utils.paths import ensure_outside
from cbir_utils.sources.data import load_collection, save_skipped


def index_parser(sub, common, fmt) -> None:
    """The options of `index`."""
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
    p.add_argument(
        "--profile",
        default="",
        help="a profile of notebooks/params/ (e.g. fast: SSCD's distilled student, 1.7 times the "
        "peer tool's indexing speed): its values become this command's defaults; options given here win",
    )
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
        add_param(m, name)
    add_param(p, "pages")
    r = p.add_argument_group(
        "ranking (as notebook 01; kept with the index, used by search and evaluate)"
    )
    for name in ("scales", "whiten_dim", "page_whiten_dim", "whiten_shrinkage", "dba_k", "qe_k"):
        add_param(r, name)
    r.add_argument(
        "--rerank-top-n", type=non_negative_int, default=DEFAULTS["RERANK_TOP_N"],
        help="candidates per query verified by local features (SIFT + RANSAC); 0 = off "
        "(default %(default)s)",
    )  # fmt: skip
    add_param(r, "graph")
    add_extract_args(p)
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
        type=positive_int,
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
        help="with --merge: build the verification graph (as --graph) in this many graph "
        "jobs (a SLURM array); with --graph-shard/--merge-graph: how many there are",
    )
    u.add_argument(
        "--graph-shard",
        type=int,
        default=-1,
        help="0-based graph shard this job verifies (e.g. $SLURM_ARRAY_TASK_ID)",
    )
    u.add_argument("--merge-graph", action="store_true", help="gather the finished graph shards")
    p.set_defaults(func=cmd_index)


def cmd_index(args) -> int:
    sharded = args.num_shards > 1 or args.merge
    graph_job = args.graph_shard >= 0 or args.merge_graph
    # a shard job checks only its own images (extract_shard); the listing is not decoded
    col = load_collection(
        args.source,
        validate="none" if sharded or graph_job else "decode",
        progress=show_progress(args),
    )
    if args.pages:
        page_cache = args.cache_dir and Path(args.cache_dir) / "pages"
        if sharded and not args.merge:  # this task's pages first; the others' from the cache
            left = pages.detect_shard(
                col, args.shard, args.num_shards, page_cache, show_progress(args)
            )
            if left:
                say(
                    args,
                    f"Shard {args.shard} of {args.num_shards}: its pages' photographs are found "
                    f"(cached); {left} page(s) of other shards are not yet. Once every shard has "
                    "run, run the array again: each task then describes its photographs.",
                )
                return 1
        col = pages.expand(col, page_cache, show_progress(args))
    if len(getattr(col, "skipped", [])) and not sharded:
        say(args, col.skipped_summary())
    name = args.name or col.root.name
    folder = (
        Path(args.out).expanduser().resolve() if args.out else project.OUTPUTS_DIR / "index" / name
    )
    ensure_outside(folder, col.root)  # an index never goes into the collection it reads
    if graph_job:
        return _index_graph(args, folder, name)
    meta, ckpt = model_settings(
        args.backbone, args.weights, args.pooling, args.image_size, args.resize,
        args.grayscale, args.descreen, args.checkpoint, args.find_photo,
    )  # fmt: skip
    opts = dict(
        batch_size=args.batch_size, num_workers=args.num_workers, progress=show_progress(args)
    )
    config = _index_config(args, meta)
    if sharded and not args.merge:  # shard jobs write only their own shard folders
        return _index_sharded(args, col, name, folder, meta, ckpt, opts, config)
    with folder_lock(folder, f"an `index` run of {args.source}"):
        if sharded:
            return _index_sharded(args, col, name, folder, meta, ckpt, opts, config)
        return _index_into(args, col, name, folder, meta, ckpt, opts, config)


def _index_into(args, col, name, folder, meta, ckpt, opts, config) -> int:
    """Build the index in ``folder``, or bring the one there up to date (its lock held)."""

    stats = features.ExtractStats()
    store = local_store()
    if (folder / "index.json").exists() and not args.rebuild:
        index = Index.load(folder)
        if not index.same_settings(meta, args.mirror, "descriptor") or index.config != config:
            made, asked = index.config.to_dict(), config.to_dict()
            differ = [f"{k} {made.get(k)!r} there, {asked.get(k)!r} asked"
                      for k in differing(made, asked)]  # fmt: skip
            raise InputError(
                f"The index in {folder} was built with other model settings"
                f"{' (' + '; '.join(differ) + ')' if differ else ''}; pass --rebuild to "
                "replace it, or --name/--out for a new index."
            )
        report = index.update(col, cache_dir=args.cache_dir, stats=stats, **opts)
        gone = sorted(set(index.items["relpath"]) - set(col.items["relpath"]))
        if gone and args.prune:
            index.remove(gone)
        index.fitted(store, show_progress(args))  # refitted only when the images changed
        index.save(folder)
        save_skipped(col, folder)
        say(
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
    index.fitted(store, show_progress(args))  # whitening, αDBA, the verification graph
    index.save(folder)
    save_skipped(col, folder)
    say(
        args,
        f"Index {folder}: {len(index)} images, {index.vectors.shape[1]}-d; "
        f"{stats.computed} descriptors computed, {stats.cached} from the cache.",
    )
    return 0


def _index_config(args, meta: dict):
    """The retrieval pipeline of ``index``: its options (notebook 01's defaults)."""

    top_n = args.rerank_top_n
    return pipeline_config(
        meta, args.mirror, pages=args.pages, scales=tuple(args.scales),
        whiten_dim=args.whiten_dim, page_whiten_dim=args.page_whiten_dim,
        whiten_shrinkage=args.whiten_shrinkage, dba_k=args.dba_k, qe_k=args.qe_k,
        rerank=top_n > 0, rerank_top_n=top_n or DEFAULTS["RERANK_TOP_N"],
        graph=(args.graph or args.graph_shards > 0) and top_n > 0,
    )  # fmt: skip


def _index_sharded(args, col, name, folder, meta, ckpt, opts, config) -> int:
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
        index.fitted(local_store(), show_progress(args), verify=not in_shards)
        index.save(folder)
        save_skipped(col, folder)
        say(
            args,
            f"Index {folder}: {len(index)} images merged from the shards"
            + (f"; {n_bad} unusable image(s) left out (skipped.csv)" if n_bad else "")
            + ".",
        )
        if in_shards:
            base = f"python -m cbir_utils index {args.source} --name {name} --graph-shards {args.graph_shards}"
            say(
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
        local_store().precompute(mine, show_progress(args), keep=False)
    say(
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

    m = args.graph_shards
    if m < 1:
        raise InputError("--graph-shard and --merge-graph need --graph-shards M (graph tasks).")
    index = Index.load(folder)
    if not index.config.graph:
        raise InputError(f"The index in {folder} has no verification graph (GRAPH is off).")
    fitted = index.fitted(local_store(), show_progress(args), verify=False)
    digest = index.vectors_digest()
    base = f"python -m cbir_utils index {args.source} --name {name} --graph-shards {m}"
    if args.merge_graph:
        with folder_lock(folder, "a `--merge-graph` run"):
            fitted.graph = graph_shards.gather(fitted, digest, folder, m)
            fitted.graph_pending = False
            index.save(folder)
        say(args, f"Index {folder}: verification graph gathered from {m} shards "
             f"({fitted.graph.edges.nnz // 2} edges).")  # fmt: skip
        return 0
    if not 0 <= args.graph_shard < m:
        raise InputError(f"--graph-shard must be in [0, {m}), got {args.graph_shard}.")
    n = graph_shards.verify_shard(
        fitted, digest, folder, args.graph_shard, m, local_store(), show_progress(args)
    )
    say(args, f"Graph shard {args.graph_shard} of {m}: {n} image(s) verified now, in "
         f"{graph_shards.graph_dir(folder)}. When every graph shard is done: "
         f"{base} --merge-graph")  # fmt: skip
    return 0


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


def add_parser(sub, common, fmt) -> None:
    """The options of `add`."""
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
    add_extract_args(p)
    p.set_defaults(func=cmd_add)


def cmd_add(args) -> int:
    index, folder = open_index(args.index)
    files = image_files(args.images)
    stats = features.ExtractStats()
    report = index.add(
        files,
        scenes=[args.scene] * len(files),
        cache_dir=args.cache_dir,
        stats=stats,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=show_progress(args),
    )
    if report.added or report.replaced:
        index.fitted(local_store(), show_progress(args))  # refitted on the grown collection
    index.save(folder)
    say(
        args,
        f"Index {folder}: {len(index)} images; {report.added} added, {report.replaced} changed, "
        f"{report.unchanged} already there; {stats.computed} descriptors computed.",
    )
    return 0
