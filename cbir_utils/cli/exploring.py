"""`map` (the collection in 2-D) and `explain` (why two images match)."""

from __future__ import annotations

import json
from pathlib import Path

from cbir_utils.cli.common import add_output_args, open_index, positive_int, run_dir, say
from cbir_utils.engine import verify
from cbir_utils.errors import MissingFilesError
from cbir_utils.evidence import layout
from cbir_utils.io import save_csv


def map_parser(sub, common, fmt) -> None:
    """The options of `map`."""
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
    p.add_argument("--thumb-px", type=positive_int, default=48, help="thumbnail size")
    add_output_args(p, "map")
    p.set_defaults(func=cmd_map)


def cmd_map(args) -> int:
    index, _ = open_index(args.index)
    params = {"INDEX": index.name, "METHOD": args.method, "SEED": args.seed}
    out = run_dir("map", index, args, params)
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
    say(args, f"Written: {out / 'map.png'}, {out / 'map.csv'}")
    return 0


def explain_parser(sub, common, fmt) -> None:
    """The options of `explain`."""
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


def cmd_explain(args) -> int:
    for p in (args.image_a, args.image_b):
        if not Path(p).is_file():
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
