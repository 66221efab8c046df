"""Contact sheets of duplicate groups: a self-contained HTML page and a PNG figure.

The HTML page has one row per group: thumbnails (embedded as base64 JPEG, so the page is
one file that can be mailed or archived), each image's file name, scene when known, and
its cosine similarity to the group's centre; clicking a thumbnail opens the full image
(a link relative to the page, or ``file://``). A filter box narrows the groups by file name
or scene. The PNG version (matplotlib) shows the first groups for a notebook.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
from tqdm.auto import tqdm

from .groups import DuplicateGroups
from .io import atomic_write_text

PathLike = str | os.PathLike
MAJORITY_COLOR = "#1a9850"
OTHER_COLOR = "#d73027"
UNKNOWN_COLOR = "#8c8c8c"

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
    """A JPEG thumbnail of an image as a ``data:`` URI (``None`` if it cannot be read)."""
    from .data import load_image

    try:
        im = load_image(path)
    except (OSError, ValueError):
        return None
    im.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_link(target: PathLike, page_dir: PathLike, relative: bool = True) -> str:
    """URL of ``target`` for a page in ``page_dir``: relative when possible, else ``file://``."""
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
) -> Path:
    """Write a self-contained HTML contact sheet of the duplicate groups.

    Args:
        groups: The groups (:func:`cbir_utils.groups.duplicate_groups`).
        paths: Image file of each image, in the order of ``groups.labels``.
        path: Where to write the ``.html`` file (atomically).
        names: Name shown per image (default: the file name).
        scenes: Scene label per image (``""`` unknown); images outside their group's
            majority scene get a red frame, the others green.
        title: Page title.
        min_size: Smallest group shown (2 leaves out images without duplicates).
        max_groups: Show at most this many groups (largest first); ``None`` for all.
        thumb_px: Thumbnail size in pixels.
        relative_links: Link images relative to the page (else ``file://`` URLs).
        notes: Extra lines for the page header (e.g. the model and threshold).
        progress: Show a progress bar while making thumbnails.

    Returns:
        The path written.
    """
    n = len(groups.labels)
    if len(paths) != n:
        raise ValueError(f"{len(paths)} paths for {n} grouped images.")
    if names is not None and len(names) != n:
        raise ValueError(f"{len(names)} names for {n} grouped images.")
    if scenes is not None and len(scenes) != n:
        raise ValueError(f"{len(scenes)} scenes for {n} grouped images.")
    if thumb_px < 16:
        raise ValueError(f"thumb_px must be at least 16, got {thumb_px!r}.")
    out = Path(path)
    page_dir = out.resolve().parent
    names = [Path(p).name for p in paths] if names is None else [str(s) for s in names]
    sc = np.asarray(scenes, dtype=object) if scenes is not None else None
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
        figs = []
        for i in members:
            uri = thumbnail_data_uri(paths[i], thumb_px) or _placeholder(thumb_px)
            scene = str(sc[i]) if sc is not None else ""
            status = _status(scene, majority)
            scene_html = f'<span class="scene">{esc(scene)}</span>' if scene else ""
            figs.append(
                f'<figure class="{status}"><a href="{esc(file_link(paths[i], page_dir, relative_links))}" '
                f'target="_blank" title="{esc(names[i])}"><img src="{uri}" alt="{esc(names[i])}">'
                f'</a><figcaption><span class="score">{groups.centre_scores[i]:.3f}'
                f'</span> <span class="name">{esc(names[i])}</span>{scene_html}</figcaption></figure>'
            )
            bar.update(1)
        text = " ".join(
            [names[i] for i in members] + ([str(sc[i]) for i in members] if sc is not None else [])
        )
        sections.append(
            f'<section class="group" id="group-{g_no}" data-text="{esc(text.lower())}">'
            f"<h2>Group {g_no}<small>{esc(info)}</small></h2>"
            f'<div class="row">{"".join(figs)}</div></section>'
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
        "similarity to the group's centre. Click a thumbnail to open the image."
    )
    css = _CSS % {"ok": MAJORITY_COLOR, "odd": OTHER_COLOR, "unk": UNKNOWN_COLOR, "cell": thumb_px}
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{css}</style>\n</head>\n<body>\n<header>\n"
        f"<h1>{esc(title)}</h1>\n<p>{summary}</p>\n"
        + "".join(f"<p>{esc(s)}</p>\n" for s in notes)
        + legend
        + '<input id="filter" type="search" placeholder="Filter groups by file name or scene" '
        'aria-label="Filter groups">\n</header>\n<main>\n'
        + ("\n".join(sections) if sections else "<p>No group of duplicates at this threshold.</p>")
        + "\n</main>\n<footer>Made with cbir_utils (EYCON CBIR).</footer>\n"
        f"<script>{_JS}</script>\n</body>\n</html>\n"
    )
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
    """A PNG-ready matplotlib figure of the first groups: one row per group.

    Frames: green for the group's majority scene, red for another scene, grey when the
    scene is unknown. Each image is captioned with its score to the group's centre and its
    name. Rows longer than ``max_per_group`` end with a "+n more" note.

    Returns:
        The figure (also saved as PNG when ``path`` is given).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .data import load_image
    from .io import save_figure

    n = len(groups.labels)
    if len(paths) != n:
        raise ValueError(f"{len(paths)} paths for {n} grouped images.")
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
