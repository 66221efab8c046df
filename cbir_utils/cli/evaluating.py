"""`evaluate` (against scene labels or verdicts) and `verdicts`."""

from __future__ import annotations

import sys

from cbir_utils.cli.common import (
    DEFAULTS,
    add_output_args,
    add_param,
    add_rerank_arg,
    add_split_args,
    local_store,
    open_index,
    run_dir,
    say,
    show_progress,
    split_of,
)
from cbir_utils.engine import search
from cbir_utils.errors import InputError
from cbir_utils.evaluation import retrieval
from cbir_utils.evidence import groups, review
from cbir_utils.io import csv_text, save_csv, save_json


def _verdict_split(index, folder, args):
    """A split whose scenes are the confirmed groups of the index's verdicts (all queries)."""
    import pandas as pd

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
        say(args, f"warning: {len(vl.conflicts)} pair(s) judged 'not a reprint' were joined by "
             "other confirmations (see verdicts.csv); they count as relevant here.")  # fmt: skip
    if args.threshold is None:
        args.threshold = groups.fallback_threshold(index.meta.get("backbone"))
    say(args, f"Ground truth: {vl.n_groups} confirmed group(s), "
         f"{int((vl.labels != '').sum())} images; every other image counts as not relevant.")  # fmt: skip
    return pd.DataFrame({"scene": vl.labels, "split": "test"})


def evaluate_parser(sub, common, fmt) -> None:
    """The options of `evaluate`."""
    p = sub.add_parser(
        "evaluate",
        parents=[common], help="retrieval metrics against the scene labels", formatter_class=fmt,
                       description="Each labelled image in turn is the query; relevant = same scene. "
                       "Protocols all / study / disjoint as in the notebooks.")  # fmt: skip
    p.add_argument("index", help="index folder or name")
    add_param(p, "ks")
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULTS["THRESHOLD"],
        help="score threshold of the pairwise metrics (cosine, plus the verification bonus "
        "when re-ranked); default: chosen on the validation images",
    )
    add_param(p, "top_k", help="results per query in topk.csv")
    add_rerank_arg(p, "as `search` ranks")
    p.add_argument(
        "--verdicts",
        action="store_true",
        help="ground truth from the imported verdicts (relevant = confirmed the same "
        "photograph) instead of the scene labels",
    )
    add_output_args(p, "evaluate")
    add_split_args(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    index, folder = open_index(args.index)
    if args.verdicts:
        split = _verdict_split(index, folder, args)
    elif not index.has_labels:
        raise InputError(
            f"The index {index.name} has no scene labels (no scene with two images): nothing to "
            "evaluate. Lay the collection out as one folder per scene, give a manifest, or "
            "review its candidates and evaluate with --verdicts."
        )
    else:
        split = split_of(index, args)
    params = {
        "INDEX": index.name, "KS": args.ks, "THRESHOLD": args.threshold, "TOP_K": args.top_k,
        "SPLIT_SEED": args.split_seed, "RERANK_TOP_N": args.rerank_top_n,
        "VERDICTS": bool(args.verdicts),
    }  # fmt: skip
    out = run_dir("evaluate", index, args, params)
    scenes = split["scene"].to_numpy(dtype=object)
    # with verdicts there is no split: every image of a confirmed group is a query
    protocols = ("all",) if args.verdicts else ("all", "study", "disjoint")
    # the index's pipeline ranks the collection exactly as notebook 01 does (and `search`):
    # whole lists up to search.FULL_LISTS_MAX images (exact metrics), the top above
    store = local_store()
    fitted = index.fitted(store, show_progress(args))
    if args.rerank_top_n is not None:
        fitted = fitted.with_rerank(args.rerank_top_n)
    ranking = fitted.rank_collection(search.list_length(len(index)), store, show_progress(args))
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
    say(args, f"Written: {out / 'metrics.csv'}, {out / 'metrics.json'}, {out / 'topk.csv'}")
    return 0


def verdicts_parser(sub, common, fmt) -> None:
    """The options of `verdicts`."""
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


def cmd_verdicts(args) -> int:
    index, folder = open_index(args.index)
    if args.action == "import":
        if not args.file:
            raise InputError("verdicts import needs the verdicts.csv file to import.")
        report = review.import_verdicts(args.file, folder, known=index.relpaths)
        say(args, report.summary())
        return 0
    cur = review.current_verdicts(review.history(folder))

    sys.stdout.write(csv_text(cur))
    say(args, f"{len(cur)} pair(s) judged: " + ", ".join(
        f"{(cur['verdict'] == v).sum()} {label}" for v, label in review.VERDICTS.items()))  # fmt: skip
    return 0
