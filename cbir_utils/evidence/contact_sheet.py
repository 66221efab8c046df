"""Review pages (duplicate groups, search results) as self-contained HTML, and a PNG sheet.

Each page is one file (thumbnails embedded as base64 JPEG) that works offline and can be
mailed or archived: one row per duplicate group, or per query and its ranked candidates,
each image with its name, scene, provenance (every metadata value in its tooltip) and
score. A thumbnail links to the full image, or to its source (``source_url``, IIIF).
Every proposed reprint has the three verdict buttons; decisions are kept in the browser
(per index) and exported as ``verdicts.csv`` for ``verdicts import``; verdicts already
imported are shown. Dated reprints are listed by date (the photograph's circulation).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from cbir_utils.errors import InputError
from cbir_utils.evidence import circulation, review
from cbir_utils.evidence.groups import DuplicateGroups
from cbir_utils.evidence.review import VERDICTS
from cbir_utils.io import atomic_write_text, save_figure
from cbir_utils.paths import split_region
from cbir_utils.sources import provenance
from cbir_utils.sources.data import load_image

PathLike = str | os.PathLike
MAJORITY_COLOR = "#1a9850"
OTHER_COLOR = "#d73027"
UNKNOWN_COLOR = "#8c8c8c"
# Short button texts (the full verdict is the button's tooltip and what is exported).
BUTTON_LABELS = {
    "same_photo": "same photo",
    "same_scene": "same scene",
    "not_reprint": "not a reprint",
}

_CSS = """
:root { --ok: %(ok)s; --odd: %(odd)s; --unk: %(unk)s; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       background: #f4f1ea; color: #222; }
header { padding: 16px 24px 8px; background: #fff; border-bottom: 1px solid #ddd;
         position: sticky; top: 0; z-index: 1; }
h1 { font-size: 20px; margin: 0 0 4px; }
header p { margin: 2px 0; color: #555; }
#filter { margin: 8px 0 4px; padding: 6px 8px; width: min(420px, 100%%); font-size: 14px; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
            vertical-align: -1px; border: 3px solid; }
main { padding: 8px 24px 24px; }
section.group { background: #fff; margin: 12px 0; padding: 8px 12px 12px; border-radius: 6px;
                box-shadow: 0 1px 2px rgba(0,0,0,.08); }
section.group h2 { font-size: 15px; margin: 0 0 8px; }
section.group h2 small { font-weight: normal; color: #666; margin-left: 8px; }
.row { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
figure { margin: 0; width: %(cell)dpx; }
figure a { display: flex; align-items: center; justify-content: center; width: %(cell)dpx;
           height: %(cell)dpx; background: #eee; border: 3px solid var(--unk); }
figure.same a { border-color: var(--ok); }
figure.odd a { border-color: var(--odd); }
figure img { max-width: 100%%; max-height: 100%%; display: block; }
figcaption { font-size: 11px; margin-top: 3px; word-break: break-all; }
figcaption .score { font-weight: bold; }
figcaption .scene { color: #666; display: block; }
figure.odd .scene { color: var(--odd); }
.hidden { display: none; }
footer { padding: 0 24px 24px; color: #777; font-size: 12px; }
figcaption .prov { display: block; color: #444; }
figure[data-role="reference"] a { border-style: double; }
.verdict { display: flex; gap: 2px; margin-top: 3px; }
.verdict button { flex: 1; font-size: 10px; padding: 2px 1px; border: 1px solid #bbb;
                  background: #fafafa; border-radius: 3px; cursor: pointer; }
.verdict button[aria-pressed="true"][data-v="same_photo"] { background: #1a9850; color: #fff; }
.verdict button[aria-pressed="true"][data-v="same_scene"] { background: #fdae61; }
.verdict button[aria-pressed="true"][data-v="not_reprint"] { background: #d73027; color: #fff; }
figure.v-not_reprint img { opacity: .45; }
.verdict-ref { margin-top: 3px; font-size: 10px; color: #2166ac; font-weight: bold;
               text-transform: uppercase; letter-spacing: .05em; }
#review { margin: 6px 0 2px; display: flex; flex-wrap: wrap; gap: 8px; align-items: center; }
#review button { padding: 4px 10px; }
details.reprints { margin-top: 8px; font-size: 12px; }
table.reprints { border-collapse: collapse; margin-top: 4px; }
table.reprints td, table.reprints th { border-bottom: 1px solid #ddd; padding: 2px 8px;
                                       text-align: left; }
table.reprints tr.first td { font-weight: bold; }
section.query > .row > figure.query a { border-color: #2166ac; }
"""

_REVIEW_HTML = """<div id="review">
<label>Reviewer <input id="reviewer" size="14" placeholder="name or initials"></label>
<button id="export" type="button">Export verdicts.csv</button>
<span><b id="n-decisions">0</b> decision(s) made in this browser</span>
<button id="forget" type="button" title="Forget the decisions kept in this browser">Forget</button>
</div>
"""

_VERDICT_JS = """
(function () {
  var store = "cbir-verdicts:" + document.body.getAttribute("data-store");
  var initial = JSON.parse(document.getElementById("verdicts-initial").textContent || "[]");
  var cols = ["query", "candidate", "verdict", "time", "context", "reviewer"];
  function key(a, b) { return a < b ? a + "\\n" + b : b + "\\n" + a; }
  function local() {
    try { return JSON.parse(window.localStorage.getItem(store) || "[]"); }
    catch (e) { return []; }
  }
  function current() {
    var state = {};
    initial.concat(local()).forEach(function (d) {
      var k = key(d.query, d.candidate);
      if (!state[k] || String(state[k].time || "") <= String(d.time || "")) { state[k] = d; }
    });
    return state;
  }
  var reviewer = document.getElementById("reviewer");
  reviewer.value = window.localStorage.getItem("cbir-reviewer") || "";
  reviewer.addEventListener("input", function () {
    window.localStorage.setItem("cbir-reviewer", reviewer.value.trim());
  });
  var boxes = Array.prototype.slice.call(document.querySelectorAll(".verdict"));
  function show() {
    var state = current();
    boxes.forEach(function (box) {
      var d = state[key(box.getAttribute("data-query"), box.getAttribute("data-candidate"))];
      var v = d ? d.verdict : "";
      Array.prototype.forEach.call(box.querySelectorAll("button"), function (b) {
        b.setAttribute("aria-pressed", String(b.getAttribute("data-v") === v));
      });
      var fig = box.closest("figure");
      Object.keys(VERDICT_NAMES).forEach(function (name) {
        fig.classList.toggle("v-" + name, name === v);
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll("td.rv"), function (td) {
      var q = td.getAttribute("data-query"), c = td.getAttribute("data-candidate");
      if (q === c) { return; }  // the reference or the query itself
      var d = state[key(q, c)];
      td.textContent = d ? VERDICT_NAMES[d.verdict] : "";
    });
    document.getElementById("n-decisions").textContent = String(local().length);
  }
  var VERDICT_NAMES = %(names)s;
  boxes.forEach(function (box) {
    box.addEventListener("click", function (ev) {
      var b = ev.target.closest("button");
      if (!b) { return; }
      var all = local();
      all.push({
        query: box.getAttribute("data-query"), candidate: box.getAttribute("data-candidate"),
        verdict: b.getAttribute("data-v"), time: new Date().toISOString(),
        context: box.getAttribute("data-context"), reviewer: reviewer.value.trim()
      });
      window.localStorage.setItem(store, JSON.stringify(all));
      show();
    });
  });
  function cell(v) {  // spreadsheet-safe, as cbir_utils.io.neutralise
    v = String(v === undefined ? "" : v);
    if (/^'*[=+\\-@\\t\\r]/.test(v) && !/^[+-]?(\\d+\\.?\\d*|\\.\\d+)([eE][+-]?\\d+)?$/.test(v)) v = "'" + v;
    return '"' + v.replace(/"/g, '""') + '"';
  }
  document.getElementById("export").addEventListener("click", function () {
    var lines = [cols.join(",")];
    local().forEach(function (d) { lines.push(cols.map(function (c) { return cell(d[c]); }).join(",")); });
    var blob = new Blob([lines.join("\\n") + "\\n"], {type: "text/csv"});
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "verdicts.csv";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  });
  document.getElementById("forget").addEventListener("click", function () {
    if (window.confirm("Forget the decisions kept in this browser? Export them first.")) {
      window.localStorage.removeItem(store);
      show();
    }
  });
  show();
  document.body.setAttribute("data-review-ready", "1");
})();
"""

_JS = """
(function () {
  var box = document.getElementById("filter");
  var groups = Array.prototype.slice.call(document.querySelectorAll("section.group"));
  var count = document.getElementById("shown");
  function apply() {
    var q = box.value.trim().toLowerCase();
    var shown = 0;
    groups.forEach(function (g) {
      var hit = !q || g.getAttribute("data-text").indexOf(q) !== -1;
      g.classList.toggle("hidden", !hit);
      if (hit) { shown += 1; }
    });
    count.textContent = String(shown);
  }
  box.addEventListener("input", apply);
  apply();
  document.body.setAttribute("data-ready", "1");
  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.images);
    var broken = imgs.filter(function (im) { return !im.complete || im.naturalWidth === 0; });
    document.body.setAttribute("data-images", String(imgs.length));
    document.body.setAttribute("data-broken-images", String(broken.length));
  });
})();
"""


def thumbnail_data_uri(path: PathLike, max_px: int = 160, quality: int = 80) -> str | None:
    """A JPEG thumbnail of an image as a ``data:`` URI (``None`` if it cannot be read).

    A photograph found on a page (``page#xywh=...``) shows beside its page, the box drawn."""

    page, box = split_region(path)
    try:
        im = load_image(path)
        if box is not None:
            im = _beside_page(im, load_image(page), box, max_px)
    except (OSError, ValueError):
        return None
    im.thumbnail((max_px, max_px) if box is None else (2 * max_px, max_px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _beside_page(crop: Image.Image, page: Image.Image, box, px: int) -> Image.Image:
    """``crop`` and, on its right, its ``page`` with ``box`` drawn in red (both ``px`` high)."""
    crop = crop.convert("RGB")
    crop.thumbnail((px, px))
    k = px / page.height
    small = page.convert("RGB").resize((max(1, round(page.width * k)), px))
    x, y, w, h = (round(v * k) for v in box)
    ImageDraw.Draw(small).rectangle([x, y, x + w, y + h], outline=(220, 0, 0), width=2)
    out = Image.new("RGB", (crop.width + 4 + small.width, px), "white")
    out.paste(crop, (0, (px - crop.height) // 2))
    out.paste(small, (crop.width + 4, 0))
    return out


def file_link(target: PathLike, page_dir: PathLike, relative: bool = True) -> str:
    """URL of ``target`` for a page in ``page_dir``: relative when possible, else ``file://``.

    A photograph found on a page links to the page, with its box as a media fragment."""
    base, box = split_region(target)
    if box is not None:
        return file_link(base, page_dir, relative) + "#xywh=" + ",".join(map(str, box))
    target = Path(target).resolve()
    if relative:
        try:
            rel = os.path.relpath(target, Path(page_dir).resolve())
            return quote(Path(rel).as_posix())
        except ValueError:  # another drive (Windows)
            pass
    return target.as_uri()


def _placeholder(px: int) -> str:
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{px}" height="{px}">'
        f'<rect width="100%" height="100%" fill="#ddd"/><text x="50%" y="50%" font-size="12" '
        f'text-anchor="middle" fill="#555">unreadable</text></svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")


def _majority(scenes: np.ndarray | None, members: np.ndarray) -> str | None:
    if scenes is None:
        return None
    labelled = [s for s in scenes[members] if s]
    return Counter(labelled).most_common(1)[0][0] if labelled else None


def _status(scene: str | None, majority: str | None) -> str:
    if not scene or majority is None:
        return "unknown"
    return "same" if scene == majority else "odd"


def _verdict_box(query: str, candidate: str, context: str) -> str:
    esc = html.escape
    buttons = "".join(
        f'<button type="button" data-v="{v}" aria-pressed="false" title="{esc(label)}">'
        f"{esc(BUTTON_LABELS[v])}</button>"
        for v, label in VERDICTS.items()
    )
    return (
        f'<div class="verdict" data-query="{esc(query)}" data-candidate="{esc(candidate)}" '
        f'data-context="{esc(context)}">{buttons}</div>'
    )


def _figure(
    uri: str,
    href: str,
    name: str,
    score_html: str,
    meta: dict | None,
    meta_cols: Sequence[str],
    cls: str = "",
    scene: str = "",
    verdict_html: str = "",
    role: str = "",
) -> str:
    """One thumbnail with its caption (score, name, provenance, scene) and verdict buttons."""
    esc = html.escape
    tip = name
    prov = ""
    if meta:
        line = provenance.describe(meta)
        prov = f'<span class="prov">{esc(line)}</span>' if line else ""
        more = provenance.tooltip(meta, meta_cols)
        tip = f"{name}\n{more}" if more else name
    scene_html = f'<span class="scene">{esc(scene)}</span>' if scene else ""
    role_attr = f' data-role="{role}"' if role else ""
    return (
        f'<figure class="{cls}"{role_attr}>'
        f'<a href="{esc(href)}" target="_blank" title="{esc(tip)}">'
        f'<img src="{uri}" alt="{esc(name)}"></a><figcaption>{score_html} '
        f'<span class="name">{esc(name)}</span>{prov}{scene_html}</figcaption>'
        f"{verdict_html}</figure>"
    )


def _href(path: PathLike, meta: dict | None, page_dir: Path, relative: bool) -> str:
    """Where a click on a thumbnail goes: the source page or IIIF image if given, else the file."""
    return provenance.web_link(meta) or file_link(path, page_dir, relative)


def _reprints_html(reprints: pd.DataFrame, reference: str = "") -> str:
    esc = html.escape
    if not len(reprints):
        return ""
    if not reprints["date"].astype(bool).any():
        return f'<p class="reprints">{esc(circulation.NO_DATES)}</p>'
    head = "".join(
        f"<th>{c}</th>" for c in ("date", "periodical", "page", "image", "score", "verdict", "link")
    )
    body = []
    for r in reprints.to_dict("records"):
        link = f'<a href="{esc(r["link"])}" target="_blank">source</a>' if r["link"] else ""
        score = "" if pd.isna(r["score"]) else f"{r['score']:.3f}"
        body.append(
            f'<tr class="{"first" if r["first"] else ""}"><td>{esc(r["date"])}'
            f"{' (first)' if r['first'] else ''}</td><td>{esc(r['periodical'])}</td>"
            f"<td>{esc(r['page'])}</td><td>{esc(r['image'])}</td><td>{score}</td>"
            f'<td class="rv" data-query="{esc(reference)}" data-candidate="{esc(r["image"])}">'
            f"{esc(VERDICTS.get(r['verdict'], r['verdict']))}</td><td>{link}</td></tr>"
        )
    return (
        '<details class="reprints"><summary>Reprint list, by date</summary>'
        f'<table class="reprints"><tr>{head}</tr>{"".join(body)}</table></details>'
    )


def script_json(obj: object) -> str:
    """JSON to embed in a page's ``<script>``: ``<``, ``>`` and ``&`` as ``\\u`` escapes, so
    that no value can open or close a script or a comment (``</script>``, ``<!--``)."""
    text = json.dumps(obj, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _page(
    title: str,
    header: str,
    sections: Sequence[str],
    empty: str,
    store: str,
    initial: pd.DataFrame | None,
    css_cell: int,
    filter_hint: str,
) -> str:
    esc = html.escape
    css = _CSS % {"ok": MAJORITY_COLOR, "odd": OTHER_COLOR, "unk": UNKNOWN_COLOR, "cell": css_cell}
    rows = [] if initial is None else initial.fillna("").to_dict("records")
    data, names = script_json(rows), script_json(dict(VERDICTS))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{css}</style>\n</head>\n"
        f'<body data-store="{esc(store)}">\n<header>\n<h1>{esc(title)}</h1>\n{header}'
        + _REVIEW_HTML
        + f'<input id="filter" type="search" placeholder="{esc(filter_hint)}" '
        'aria-label="Filter">\n</header>\n<main>\n'
        + ("\n".join(sections) if sections else f"<p>{esc(empty)}</p>")
        + "\n</main>\n<footer>Made with cbir_utils (EYCON CBIR). Decisions stay in this "
        "browser until exported; import them with <code>python -m cbir_utils verdicts import "
        "verdicts.csv --index NAME</code>.</footer>\n"
        f'<script type="application/json" id="verdicts-initial">{data}</script>\n'
        f"<script>{_JS}</script>\n<script>{_VERDICT_JS % {'names': names}}</script>\n"
        "</body>\n</html>\n"
    )


def _aligned_meta(items: pd.DataFrame | None, n: int) -> tuple[list[dict] | None, list[str]]:
    if items is None:
        return None, []
    if len(items) != n:
        raise InputError(f"{len(items)} metadata rows for {n} images.")
    cols = provenance.metadata_columns(items)
    return (items[cols].fillna("").to_dict("records") if cols else None), cols


def contact_sheet_html(
    groups: DuplicateGroups,
    paths: Sequence[PathLike],
    path: PathLike,
    names: Sequence[str] | None = None,
    scenes: Sequence[str] | None = None,
    title: str = "Duplicate groups",
    min_size: int = 2,
    max_groups: int | None = None,
    thumb_px: int = 160,
    relative_links: bool = True,
    notes: Sequence[str] = (),
    progress: bool = True,
    items: pd.DataFrame | None = None,
    verdicts: pd.DataFrame | None = None,
    store: str = "",
) -> Path:
    """Write a self-contained HTML contact sheet of the duplicate groups, with review buttons.

    Each group's image closest to its centre is the reference; every other member gets the
    verdict buttons about the pair. ``names``: the index's relpaths, so verdicts import;
    ``scenes``: a red frame outside the group's majority scene; ``items``: metadata in
    captions and a reprint list by date; ``store``: the browser's decision store (the index
    name; default the title). Returns the path written.
    """

    n = len(groups.labels)
    if len(paths) != n:
        raise InputError(f"{len(paths)} paths for {n} grouped images.")
    if names is not None and len(names) != n:
        raise InputError(f"{len(names)} names for {n} grouped images.")
    if scenes is not None and len(scenes) != n:
        raise InputError(f"{len(scenes)} scenes for {n} grouped images.")
    if thumb_px < 16:
        raise InputError(f"thumb_px must be at least 16, got {thumb_px!r}.")
    out = Path(path)
    page_dir = out.resolve().parent
    names = [Path(p).name for p in paths] if names is None else [str(s) for s in names]
    sc = np.asarray(scenes, dtype=object) if scenes is not None else None
    meta, meta_cols = _aligned_meta(items, n)
    lk = review.lookup(verdicts) if verdicts is not None else {}
    shown = groups.groups(min_size)
    total = len(shown)
    if max_groups is not None:
        shown = shown[: int(max_groups)]
    esc = html.escape
    n_imgs = sum(len(m) for m in shown)
    bar = tqdm(total=n_imgs, desc="Contact sheet", unit="img", disable=not progress)
    sections = []
    for g_no, members in enumerate(shown, start=1):
        majority = _majority(sc, members)
        mean = float(groups.centre_scores[members].mean())
        info = f"{len(members)} images · mean score to centre {mean:.3f}"
        if sc is not None:
            counts = Counter(s for s in sc[members] if s)
            if counts:
                info += " · scenes: " + ", ".join(f"{s} ({c})" for s, c in counts.most_common())
        ref = int(members[0])
        figs = []
        for i in members:
            uri = thumbnail_data_uri(paths[i], thumb_px) or _placeholder(thumb_px)
            scene = str(sc[i]) if sc is not None else ""
            m = meta[i] if meta is not None else None
            cls = _status(scene, majority)
            score = f'<span class="score">{groups.centre_scores[i]:.3f}</span>'
            box = (
                '<div class="verdict-ref">reference</div>'
                if i == ref
                else _verdict_box(names[ref], names[i], f"group {g_no}")
            )
            figs.append(
                _figure(uri, _href(paths[i], m, page_dir, relative_links), names[i], score,
                        m, meta_cols, cls, scene, box, "reference" if i == ref else "")
            )  # fmt: skip
            bar.update(1)
        words = [names[i] for i in members] + (
            [str(sc[i]) for i in members] if sc is not None else []
        )
        if meta is not None:
            words += [provenance.describe(meta[i]) for i in members]
        reprints = ""
        if meta is not None:
            rl = circulation.reprint_list(members, names, items, groups.centre_scores, lk, ref)
            reprints = _reprints_html(rl, names[ref])
        sections.append(
            f'<section class="group" id="group-{g_no}" data-text="{esc(" ".join(words).lower())}">'
            f"<h2>Group {g_no}<small>{esc(info)}</small></h2>"
            f'<div class="row">{"".join(figs)}</div>{reprints}</section>'
        )
    bar.close()
    legend = ""
    if sc is not None:
        legend = (
            '<p class="legend"><span><i style="border-color:var(--ok)"></i>majority scene of the group</span>'
            '<span><i style="border-color:var(--odd)"></i>another scene</span>'
            '<span><i style="border-color:var(--unk)"></i>no scene label</span></p>'
        )
    thr = "" if np.isnan(groups.threshold) else f", threshold {groups.threshold:.3f}"
    summary = (
        f"{n} images; {groups.n_groups} groups of two or more, {groups.n_singletons} without "
        f'duplicates; method {groups.method}{thr}. Showing <b id="shown">{len(shown)}</b> of '
        f"{total} groups{' (largest first)' if len(shown) < total else ''}. Score: cosine "
        "similarity to the group's centre. Click a thumbnail to open the image; judge each "
        "member against the group's reference (first image)."
    )
    header = f"<p>{summary}</p>\n" + "".join(f"<p>{esc(s)}</p>\n" for s in notes) + legend
    page = _page(
        title, header, sections, "No group of duplicates at this threshold.", store or title,
        verdicts, thumb_px, "Filter groups by file name, scene or periodical",
    )  # fmt: skip
    return atomic_write_text(out, page)


def search_results_html(
    table: pd.DataFrame,
    path: PathLike,
    query_names: dict[str, str] | None = None,
    title: str = "Search results",
    thumb_px: int = 160,
    relative_links: bool = True,
    notes: Sequence[str] = (),
    verdicts: pd.DataFrame | None = None,
    store: str = "",
    progress: bool = True,
    items: pd.DataFrame | None = None,
) -> Path:
    """Write a self-contained HTML page of search results (:meth:`Index.search`'s table), with
    review buttons, each query's results also listed by date when they have dates.

    ``query_names``: each query's name in the index, so verdicts are about index images;
    ``items``: the index's, for the provenance of indexed queries.
    """

    for c in ("query", "rank", "candidate", "score", "path"):
        if c not in table.columns:
            raise InputError(f"The search table lacks column {c!r}.")
    out = Path(path)
    page_dir = out.resolve().parent
    esc = html.escape
    meta_cols = provenance.metadata_columns(
        table.drop(
            columns=["query", "rank", "candidate", "score", "inliers", "verdict"], errors="ignore"
        )
    )
    lk = review.lookup(verdicts) if verdicts is not None else {}
    q_meta: dict[str, dict] = {}
    if items is not None and meta_cols:
        cols = [c for c in meta_cols if c in items.columns]
        q_meta = {r["relpath"]: r for r in items[["relpath", *cols]].fillna("").to_dict("records")}
    queries = list(dict.fromkeys(table["query"]))
    bar = tqdm(
        total=len(table) + len(queries), desc="Search page", unit="img", disable=not progress
    )
    sections = []
    for q_no, q in enumerate(queries, start=1):
        rows = table[table["query"] == q].sort_values("rank", kind="stable")
        qname = (query_names or {}).get(q, q)
        qmeta = q_meta.get(qname)
        uri = thumbnail_data_uri(q, thumb_px) or _placeholder(thumb_px)
        figs = [
            _figure(uri, _href(q, qmeta, page_dir, relative_links), qname,
                    '<span class="score">query</span>', qmeta, meta_cols, "query", role="query")
        ]  # fmt: skip
        bar.update(1)
        for r in rows.to_dict("records"):
            m = {c: r.get(c, "") for c in meta_cols}
            uri = thumbnail_data_uri(r["path"], thumb_px) or _placeholder(thumb_px)
            extra = (
                f" · {int(r['inliers'])} inliers" if int(r.get("inliers", -1) or -1) >= 0 else ""
            )
            score = (
                f'<span class="score">#{int(r["rank"])} {float(r["score"]):.3f}</span>{esc(extra)}'
            )
            figs.append(
                _figure(uri, _href(r["path"], m, page_dir, relative_links), str(r["candidate"]),
                        score, m, meta_cols, "", str(r.get("scene", "") or ""),
                        _verdict_box(qname, str(r["candidate"]), "search"))
            )  # fmt: skip
            bar.update(1)
        reprints = ""
        if meta_cols:  # the query (when indexed) and its results, by date
            names = [qname, *[str(c) for c in rows["candidate"]]]
            rec = [qmeta or {c: "" for c in meta_cols}, *rows[meta_cols].to_dict("records")]
            scores = [np.nan, *rows["score"].to_numpy()]
            rl = circulation.reprint_list(range(len(names)), names, pd.DataFrame(rec), scores)
            rl["verdict"] = ["query" if n == qname else lk.get((qname, n), "") for n in rl["image"]]
            reprints = _reprints_html(rl, qname)
        words = [qname, *[str(c) for c in rows["candidate"]]]
        sections.append(
            f'<section class="group query" id="query-{q_no}" data-text="{esc(" ".join(words).lower())}">'
            f"<h2>Query {q_no}<small>{esc(qname)} · {len(rows)} result(s)</small></h2>"
            f'<div class="row">{"".join(figs)}</div>{reprints}</section>'
        )
    bar.close()
    header = (
        f'<p>{len(queries)} quer{"y" if len(queries) == 1 else "ies"}; showing <b id="shown">'
        f"{len(queries)}</b>. Judge each candidate against its query (blue frame).</p>\n"
        + "".join(f"<p>{esc(s)}</p>\n" for s in notes)
    )
    page = _page(title, header, sections, "No results.", store or title, verdicts, thumb_px,
                 "Filter queries by file name")  # fmt: skip
    return atomic_write_text(out, page)


def contact_sheet_figure(
    groups: DuplicateGroups,
    paths: Sequence[PathLike],
    names: Sequence[str] | None = None,
    scenes: Sequence[str] | None = None,
    path: PathLike | None = None,
    min_size: int = 2,
    max_groups: int = 10,
    max_per_group: int = 8,
    thumb: float = 1.4,
    title: str | None = None,
):
    """A figure of the first groups, one row per group (frames green for the majority scene, red
    for another, grey unknown; "+n more" past ``max_per_group``), saved when ``path`` is given.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(groups.labels)
    if len(paths) != n:
        raise InputError(f"{len(paths)} paths for {n} grouped images.")
    names = [Path(p).name for p in paths] if names is None else [str(s) for s in names]
    sc = np.asarray(scenes, dtype=object) if scenes is not None else None
    shown = groups.groups(min_size)[:max_groups]
    if not shown:
        fig = plt.figure(figsize=(6, 1.2))
        fig.text(0.5, 0.5, "No group of duplicates at this threshold.", ha="center", va="center")
        if path is not None:
            save_figure(path, fig)
        return fig
    cols = min(max_per_group, max(len(m) for m in shown))
    fig, axes = plt.subplots(
        len(shown),
        cols,
        figsize=(thumb * cols + 0.4, thumb * 1.35 * len(shown) + 0.6),
        squeeze=False,
    )
    colors = {"same": MAJORITY_COLOR, "odd": OTHER_COLOR, "unknown": UNKNOWN_COLOR}
    for r, members in enumerate(shown):
        majority = _majority(sc, members)
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c >= len(members):
                continue
            i = members[c]
            try:
                im = load_image(paths[i])
                im.thumbnail((200, 200))
                arr = np.asarray(im)
            except (OSError, ValueError):
                arr = np.full((100, 100, 3), 220, np.uint8)
            h, w = arr.shape[:2]
            ax.imshow(arr, extent=(0, w, h, 0))
            side = max(w, h) * 1.06
            ax.set_xlim((w - side) / 2, (w + side) / 2)
            ax.set_ylim((h + side) / 2, (h - side) / 2)
            color = colors[_status(str(sc[i]) if sc is not None else "", majority)]
            ax.add_patch(
                Rectangle((0, 0), w, h, fill=False, edgecolor=color, linewidth=3, clip_on=False)
            )
            label = names[i] if len(names[i]) <= 22 else "…" + names[i][-21:]
            ax.set_xlabel(f"{groups.centre_scores[i]:.3f}\n{label}", fontsize=7, color=color)
            if c == 0:
                ax.set_ylabel(f"group {r + 1}\n({len(members)})", fontsize=9)
        if len(members) > cols:
            axes[r, cols - 1].text(
                1.02,
                0.5,
                f"+{len(members) - cols}",
                transform=axes[r, cols - 1].transAxes,
                fontsize=9,
                va="center",
            )
    thr = "" if np.isnan(groups.threshold) else f", threshold {groups.threshold:.3f}"
    fig.suptitle(
        title or f"Duplicate groups ({groups.n_groups} of two or more; {groups.method}{thr})",
        fontsize=11,
    )
    fig.tight_layout()
    if path is not None:
        save_figure(path, fig)
    return fig
