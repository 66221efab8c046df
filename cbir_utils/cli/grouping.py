"""`groups`: duplicate groups, the contact sheet and circulation timelines."""

from __future__ import annotations

from cbir_utils.cli.common import (
    add_output_args,
    add_param,
    add_split_args,
    local_store,
    non_negative_int,
    open_index,
    positive_int,
    run_dir,
    say,
    say_left_out,
    show_progress,
    split_of,
)
from cbir_utils.config import GROUP_METHODS as METHODS
from cbir_utils.evaluation import retrieval
from cbir_utils.evidence import circulation, contact_sheet, groups, review
from cbir_utils.evidence.groups import DEFAULT_K, DEFAULT_METHOD, FALLBACK_THRESHOLD
from cbir_utils.io import save_csv, save_json
from cbir_utils.sources import provenance


def _threshold(args, index, desc) -> tuple[float | None, str]:
    if args.threshold is not None:
        return args.threshold, "given"
    if args.method == "mutual_knn":
        return None, "none (mutual k-NN only)"
    if index.has_labels:
        split = split_of(index, args)
        val = retrieval.protocol_queries(split, "val")
        if len(val):
            t = retrieval.choose_threshold(desc, split["scene"], val)
            return t, "chosen on the validation images (pairwise F1)"
    backbone = index.meta.get("backbone")
    t = groups.fallback_threshold(backbone)
    measured = backbone if backbone in groups.FALLBACK_THRESHOLDS else "the default backbone"
    say(
        args,
        f"No scene labels to choose a threshold on: using {t} (chosen on the demo "
        f"collection for {measured}); pass --threshold to change it.",
    )
    return t, "fallback (no labels)"


def groups_parser(sub, common, fmt) -> None:
    """The options of `groups`."""
    p = sub.add_parser(
        "groups",
        parents=[common], help="duplicate groups, groups.csv and an HTML contact sheet", formatter_class=fmt,
                       description="Group the indexed images into printings of the same scene.")  # fmt: skip
    p.add_argument("index", help="index folder or name")
    add_param(p, "threshold", help="cosine similarity linking two images; None: chosen on "
               f"the validation images when scene labels exist, else {FALLBACK_THRESHOLD}")  # fmt: skip
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=METHODS,
        help="average: average linkage cut at the threshold (resists chaining); complete: every pair of a group above the threshold (smaller, purer groups); components: connected components (chains); mutual_knn: mutual k-nearest neighbours",
    )
    p.add_argument(
        "--k", type=positive_int, default=DEFAULT_K, help="neighbours per image for mutual_knn"
    )
    p.add_argument(
        "--min-size",
        type=positive_int,
        default=2,
        help="smallest group shown in the contact sheet",
    )
    p.add_argument(
        "--max-groups",
        type=positive_int,
        default=None,
        help="show at most this many groups in the HTML (largest first)",
    )
    p.add_argument("--thumb-px", type=positive_int, default=160, help="thumbnail size in the HTML")
    p.add_argument(
        "--timelines",
        type=non_negative_int,
        default=3,
        help="circulation timelines (PNG) drawn for the largest groups, when the metadata has dates",
    )
    add_output_args(p, "groups")
    add_split_args(p)
    p.set_defaults(func=cmd_groups)


def cmd_groups(args) -> int:
    index, folder = open_index(args.index)
    import matplotlib.pyplot as plt

    # the descriptors the index's pipeline searches (whitened, αDBA), as notebook 03 groups;
    # without labels, the plain descriptors the fallback threshold was measured on
    desc = index.fitted(local_store(), show_progress(args)).database
    threshold, how = _threshold(args, index, desc)
    if how.startswith("fallback"):
        desc = index.vectors
    params = {
        "INDEX": index.name, "METHOD": args.method, "THRESHOLD": threshold, "K": args.k,
        "MIN_SIZE": args.min_size, "SPLIT_SEED": args.split_seed,
    }  # fmt: skip
    out = run_dir("groups", index, args, params)
    g = groups.duplicate_groups(desc, threshold, args.method, args.k, progress=show_progress(args))
    names, scenes = index.relpaths, index.scenes
    labelled = any(s for s in scenes)
    g.save_csv(out / "groups.csv", names, scenes if labelled else None, 1, index.items)
    decisions = review.history(folder)
    shown_verdicts, left = review.about(decisions, names)
    say_left_out(args, left)
    notes = [
        f"Index {index.name}: {index.meta.get('backbone')} ({index.meta.get('weights')}), "
        f"threshold {'' if threshold is None else f'{threshold:.3f} '}{how}."
    ]
    html = contact_sheet.contact_sheet_html(
        g, index.paths, out / "contact_sheet.html", names=names,
        scenes=scenes if labelled else None, title=f"Duplicate groups: {index.name}",
        min_size=args.min_size, max_groups=args.max_groups, thumb_px=args.thumb_px,
        notes=notes, progress=show_progress(args), items=index.items, verdicts=shown_verdicts,
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
        say(args, circulation.NO_DATES)
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
    say(args, f"{g.n_groups} groups of two or more, {g.n_singletons} image(s) without duplicates "
         f"(threshold {'-' if threshold is None else f'{threshold:.3f}'}, {how}).")  # fmt: skip
    if "quality" in summary:
        q = summary["quality"]
        say(args, f"Against the scene labels: ARI {q['ari']:.3f}, purity {q['purity']:.3f}, "
             f"{q['n_groups']} groups for {q['n_scenes']} scenes.")  # fmt: skip
    say(args, f"Written: {out / 'groups.csv'}, {html}, {out / 'contact_sheet.png'}, "
         f"{out / 'circulation.csv'}" + (f", {len(timelines)} timeline(s) in {out / 'timelines'}"
                                         if timelines else ""))  # fmt: skip
    return 0
