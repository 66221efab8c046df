"""Simulated periodical pages with known photographs: for tests, the detector's fit and the demo.

A page is composed from printings of a collection (the demo's, the hard collection's): a
masthead or a headline, 2 to 4 columns of French text in a serif font (DejaVu Serif, shipped
with matplotlib) run close around 0 to 6 pictures, their captions, rules, line drawings and
ornaments. Pictures are ``plain``, ``oval`` (a vignette), ``faded`` or ``touching`` (a
photo-story: two or three printings a few pixels apart). The page is then scanned as archives
scan: the verso shows through, light is uneven, the sheet is skewed (up to 1.5 degrees),
scanned at 0.7 to 1.0 of its size and saved as JPEG. :func:`build_page` returns the scan and
the ground truth: one box (pixels of the scan) and scene per photograph.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from cbir_utils.io import read_csv, save_csv
from cbir_utils.paths import split_region
from cbir_utils.sources.photo import rotated_bounds

PAGE_SIZE = (1100, 1500)
"""Page size (px) before the scan."""
MARGIN = 40
GUTTER = 18
KINDS = ("plain", "oval", "faded", "touching")
"""Kinds of photograph on a page (each recorded with its box)."""
SKEW = 1.5
"""Largest skew of a scanned page (degrees)."""
FADED_CONTRAST = 60
"""Gray levels between a faded print's 5th and 95th percentiles at least: faded, not gone
(a printing already that pale is only lifted toward the paper)."""

_TEXT = (
    "Nos soldats ont tenu la ligne toute la nuit sous un feu violent et ce matin le régiment "
    "a repris le village que l'ennemi occupait depuis trois jours. Notre envoyé spécial a pu "
    "photographier les tranchées, le pont détruit et la route de la ville où passent les "
    "convois de ravitaillement. Les officiers racontent que la bataille fut longue et dure, "
    "que les canons tonnaient sans relâche et que les habitants avaient quitté leurs maisons "
    "avant l'arrivée des troupes. On lira plus loin le récit complet de ces journées, avec "
    "les lettres des blessés soignés à l'ambulance et la liste des décorations accordées. "
    "Le ministre de la guerre a visité hier le front, accompagné du général commandant "
    "l'armée, et il a félicité les hommes pour leur courage et leur patience admirable."
).split()
_CAPTIONS = (
    "Sur le front : une tranchée de première ligne",
    "Le pont de la ville après le bombardement",
    "Nos soldats au repos dans un village",
    "Un convoi de ravitaillement sur la route",
    "Les habitants rentrent dans leurs maisons",
)
_TITLES = ("LE MIROIR", "L'ILLUSTRATION", "EXCELSIOR", "LE PAYS DE FRANCE", "J'AI VU")


@dataclass
class Picture:
    """A photograph on a page: its box ``(x, y, w, h)`` in the scan's pixels."""

    box: tuple[int, int, int, int]
    scene: str
    kind: str
    source: str


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    import matplotlib

    name = "DejaVuSerif-Bold.ttf" if bold else "DejaVuSerif.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf" / name), size)


def _words(rng: np.random.Generator, n: int) -> list[str]:
    start = int(rng.integers(len(_TEXT)))
    return [_TEXT[(start + i) % len(_TEXT)] for i in range(n)]


def _fill_text(draw: ImageDraw.ImageDraw, box, busy: np.ndarray, rng, size: int) -> None:
    """Lines of text in ``box`` (x0, y0, x1, y1), skipping the rows ``busy`` marks."""
    font, line = _font(size), int(size * 1.35)
    x0, y0, x1, y1 = box
    y = y0
    while y + line <= y1:
        if busy[y : y + line, x0:x1].any() or rng.random() < 0.05:
            y += line if not busy[y : y + line, x0:x1].any() else 2
            continue
        text, words = "", _words(rng, 30)
        for w in words:
            if draw.textlength(f"{text} {w}" if text else w, font=font) > x1 - x0:
                break
            text = f"{text} {w}" if text else w
        draw.text((x0, y), text, fill=int(rng.integers(0, 50)), font=font)
        y += line


def _drawing(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A line drawing (an engraving's hatching, outlines): not a photograph."""
    im = Image.new("L", (w, h), 255)
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(6, 14))):
        x, y = rng.uniform(0, w, 2), rng.uniform(0, h, 2)
        d.line([(x[0], y[0]), (x[1], y[1])], fill=20, width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(2, 5))):
        cx, cy, r = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h), rng.uniform(8, 40)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=30, width=2)
    step = int(rng.integers(5, 9))
    for x in range(0, w // 2, step):  # hatching on one side
        d.line([(x, h // 2), (x + h // 3, h)], fill=60, width=1)
    return im


def _picture(im: Image.Image, w: int, kind: str, rng: np.random.Generator) -> Image.Image:
    """A printing scaled to width ``w``, made ``kind``; white outside an oval's ellipse."""
    g = im.convert("L")
    g = g.resize((w, max(8, round(g.height * w / g.width))), Image.BILINEAR)
    if kind == "faded":  # contrast lowered to 35-55 %, yet still FADED_CONTRAST levels
        a = np.asarray(g, dtype=np.float32)
        lo, hi = np.percentile(a, [5, 95])
        f = max(rng.uniform(0.35, 0.55), min(1.0, FADED_CONTRAST / max(hi - lo, 1.0)))
        g = Image.fromarray((255 - (255 - a) * f).astype(np.uint8))
    if kind == "oval":
        mask = Image.new("L", g.size, 0)
        ImageDraw.Draw(mask).ellipse([0, 0, g.width - 1, g.height - 1], fill=255)
        g = Image.composite(
            g, Image.new("L", g.size, 255), mask.filter(ImageFilter.GaussianBlur(2))
        )
    return g


def compose(
    printings: Sequence[tuple[Image.Image, str, str]],
    rng: np.random.Generator,
    kinds: Sequence[str] | None = None,
) -> tuple[Image.Image, list[Picture]]:
    """The page (before the scan) holding ``printings`` ``(image, scene, source)``.

    ``kinds``: the kind of each picture in turn, in the order of ``printings`` (a
    ``touching`` one takes the next printings into its story, up to three); drawn otherwise.
    """
    W, H = PAGE_SIZE
    page = Image.new("L", (W, H), 255)
    d = ImageDraw.Draw(page)
    busy = np.zeros((H, W), dtype=bool)
    top = MARGIN
    if rng.random() < 0.4:  # a masthead
        title = str(rng.choice(_TITLES))
        d.text((W // 2, top), title, fill=0, font=_font(64, bold=True), anchor="mt")
        top += 84
        d.line([(MARGIN, top), (W - MARGIN, top)], fill=0, width=3)
        top += 14
    if rng.random() < 0.6:  # a headline
        d.text((MARGIN, top), " ".join(_words(rng, 6)).upper(), fill=0, font=_font(26, bold=True))
        top += 44
    n_cols = int(rng.integers(2, 5))
    col_w = (W - 2 * MARGIN - (n_cols - 1) * GUTTER) // n_cols
    size = int(rng.integers(13, 17))
    pictures: list[Picture] = []
    queue = list(printings)
    occupied: list[tuple[int, int, int, int]] = []

    def free(x0, y0, x1, y1) -> bool:
        return not any(
            x0 < b[2] + 12 and b[0] - 12 < x1 and y0 < b[3] + 12 and b[1] - 12 < y1
            for b in occupied
        )

    n_drawings = int(rng.random() < 0.4) + int(rng.random() < 0.15)
    slots = [("photo", p) for p in queue] + [("drawing", None)] * n_drawings
    order = rng.permutation(len(slots)) if kinds is None else np.arange(len(slots))
    todo = list(kinds) if kinds is not None else None
    i = 0
    while i < len(order):
        what, item = slots[order[i]]
        i += 1
        kind = "plain"
        group = [item]
        if what == "photo":
            kind = todo.pop(0) if todo else str(rng.choice(KINDS, p=[0.4, 0.2, 0.2, 0.2]))
            if kind == "touching":  # take one or two more printings of the queue into the story
                while len(group) < 3 and i < len(order) and slots[order[i]][0] == "photo":
                    group.append(slots[order[i]][1])
                    i += 1
                    if rng.random() < 0.5 or (kinds is not None and len(group) == 2):
                        break
                if len(group) == 1:
                    kind = "plain"
        span = int(rng.integers(1, min(n_cols, 2 if kind != "touching" else 3) + 1))
        if kind == "touching":
            span = max(span, min(n_cols, len(group)))
        width = span * col_w + (span - 1) * GUTTER
        for attempt in range(60):  # where it fits; narrower after 30 tries
            if attempt == 30 and span > 1 and kind != "touching":
                span, width = 1, col_w
            c = int(rng.integers(0, n_cols - span + 1))
            x0 = MARGIN + c * (col_w + GUTTER)
            if what == "drawing":
                ims = [_drawing(width, int(width * rng.uniform(0.5, 0.9)), rng)]
            elif kind == "touching":
                gap = int(rng.integers(3, 8))
                w_each = (width - gap * (len(group) - 1)) // len(group)
                ims = [_picture(g[0], w_each, "plain", rng) for g in group]
                h = min(im.height for im in ims)
                ims = [im.crop((0, 0, im.width, h)) for im in ims]
            else:
                ims = [_picture(group[0][0], width, kind, rng)]
            h = max(im.height for im in ims)
            y0 = int(rng.integers(top, max(top + 1, H - MARGIN - h - 40)))
            if y0 + h + 40 <= H - MARGIN and free(x0, y0, x0 + width, y0 + h + 30):
                break
        else:
            continue  # no room left on this page
        x = x0
        for im, g in zip(ims, group):
            page.paste(im, (x, y0))
            if what == "photo":
                pictures.append(Picture((x, y0, im.width, im.height), g[1], kind, g[2]))
            x += im.width + (gap if kind == "touching" else 0)
        occupied.append((x0, y0, x0 + width, y0 + h + 30))
        busy[max(0, y0 - 8) : y0 + h + 34, max(0, x0 - 8) : x0 + width + 8] = True
        if what == "photo":  # the caption, close under the picture
            cap = str(rng.choice(_CAPTIONS))
            d.text((x0, y0 + h + 6), cap, fill=10, font=_font(max(11, size - 2), bold=True))
    for c in range(n_cols):
        x0 = MARGIN + c * (col_w + GUTTER)
        _fill_text(d, (x0, top, x0 + col_w, H - MARGIN), busy, rng, size)
        if c and rng.random() < 0.5:  # a column rule
            xr = x0 - GUTTER // 2
            d.line([(xr, top), (xr, H - MARGIN)], fill=40, width=1)
    if rng.random() < 0.3:  # an ornament at the foot: a thick and a thin rule
        d.line([(W // 2 - 60, H - MARGIN + 10), (W // 2 + 60, H - MARGIN + 10)], fill=0, width=4)
        d.line([(W // 2 - 40, H - MARGIN + 18), (W // 2 + 40, H - MARGIN + 18)], fill=0, width=1)
    return page, pictures


def scan(
    page: Image.Image, pictures: list[Picture], rng: np.random.Generator, verso: Image.Image | None
) -> tuple[Image.Image, list[Picture]]:
    """The page as an archive scans it; the pictures' boxes follow."""
    a = np.asarray(page, dtype=np.float32)
    if verso is not None:  # show-through: the reverse page, mirrored, faint
        back = np.asarray(verso.transpose(Image.FLIP_LEFT_RIGHT).resize(page.size), np.float32)
        a = a - rng.uniform(0.05, 0.14) * (255 - back)
    h, w = a.shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    ang = rng.uniform(0, 2 * np.pi)
    light = 1 - rng.uniform(0.05, 0.3) * (np.cos(ang) * xx + np.sin(ang) * yy)
    a = np.clip(a * light * rng.uniform(0.88, 0.97) + rng.normal(0, 3, a.shape), 0, 255)
    im = Image.fromarray(a.astype(np.uint8))
    deg = float(rng.uniform(-SKEW, SKEW))
    im = im.rotate(deg, resample=Image.BILINEAR, fillcolor=int(a.mean() + 20))
    s = float(rng.uniform(0.7, 1.0))
    im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
    out = []
    for p in pictures:
        x0, y0, x1, y1 = (v * s for v in rotated_bounds(p.box, deg, (w, h)))
        box = (round(x0), round(y0), round(x1 - x0), round(y1 - y0))
        out.append(Picture(box, p.scene, p.kind, p.source))
    return im, out


def build_page(
    printings: Sequence[tuple[Image.Image, str, str]],
    rng: np.random.Generator,
    kinds: Sequence[str] | None = None,
) -> tuple[Image.Image, list[Picture]]:
    """A scanned page holding ``printings`` (kinds as :func:`compose`) and its ground truth."""
    page, pictures = compose(printings, rng, kinds)
    verso = compose([], rng)[0] if rng.random() < 0.7 else None
    return scan(page, pictures, rng, verso)


def generate(
    items: Sequence[tuple[str | os.PathLike, str]],
    n_pages: int,
    seed: int,
    counts: Sequence[int] = (0, 1, 1, 2, 2, 3, 3, 4, 5, 6),
) -> Iterator[tuple[str, Image.Image, list[Picture]]]:
    """``n_pages`` page scans ``(name, scan, pictures)`` of printings ``items`` ``(path, scene)``,
    each printing used once at most, ``counts`` the numbers of printings a page may hold."""
    rng = np.random.default_rng([seed, 25])
    order = list(rng.permutation(len(items)))
    for k in range(n_pages):
        n = int(rng.choice(counts))
        printings = []
        for j in [order.pop() for _ in range(min(n, len(order)))]:
            path, scene = items[j]
            with Image.open(path) as im:
                printings.append((im.convert("L"), scene, str(path)))
        scan_im, pictures = build_page(printings, rng)
        yield f"page_{seed:03d}_{k:03d}.jpg", scan_im, pictures


def build_pages(
    items: Sequence[tuple[str | os.PathLike, str]],
    out_dir: str | os.PathLike,
    n_pages: int,
    seed: int,
) -> list[dict]:
    """Write :func:`generate`'s pages as JPEG files in ``out_dir``; returns the ground truth.

    A row per photograph (``page``, ``x``, ``y``, ``w``, ``h``, ``scene``, ``kind``,
    ``source``), and a row with empty ``scene`` and ``kind`` for a page without photograph.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name, scan_im, pictures in generate(items, n_pages, seed):
        scan_im.save(out / name, quality=80)
        for p in pictures:
            x, y, w, h = p.box
            rows.append(
                dict(
                    page=name,
                    x=x,
                    y=y,
                    w=w,
                    h=h,
                    scene=p.scene,
                    kind=p.kind,
                    source=Path(p.source).name,
                )
            )
        if not pictures:
            rows.append(dict(page=name, x=0, y=0, w=0, h=0, scene="", kind="", source=""))
    return rows


def demo_pages(
    items: pd.DataFrame, out_dir: str | os.PathLike, n_pages: int = 6, seed: int = 0
) -> pd.DataFrame:
    """A few pages of a collection's printings (``items``: ``path``, ``scene``, ``relpath``),
    built once into ``out_dir/pages/`` with its ground truth ``out_dir/truth.csv``
    (:func:`build_pages`), and read back on later runs. Each row also says which other
    printings of the same scene stay off the pages (``queries``: relpaths joined by ``|``):
    those find it on a page."""
    out = Path(out_dir)
    truth_file = out / "truth.csv"
    if truth_file.is_file():
        return read_csv(truth_file, dtype=str, keep_default_na=False)
    labelled = items[items["scene"] != ""]
    pairs = list(zip(labelled["path"], labelled["scene"]))
    rows = pd.DataFrame(build_pages(pairs, out / "pages", n_pages, seed))
    placed = set(rows["source"])
    by_scene = labelled.groupby("scene")["relpath"].apply(list).to_dict()
    rows["queries"] = [
        "|".join(r for r in by_scene.get(s, []) if Path(r).name not in placed)
        for s in rows["scene"]
    ]
    save_csv(truth_file, rows)
    return read_csv(truth_file, dtype=str, keep_default_na=False)


def demo_queries(truth: pd.DataFrame, relpaths: Sequence[str], n: int = 2) -> list[int]:
    """Rows (in ``relpaths``) of ``n`` printings kept off the pages whose scene is on them."""
    row_of = {r: i for i, r in enumerate(relpaths)}
    picked: list[int] = []
    for q in truth.drop_duplicates("scene")["queries"]:
        first = next((row_of[r] for r in str(q).split("|") if r in row_of), None)
        if first is not None and len(picked) < n:
            picked.append(first)
    return picked


def match_table(
    truth: pd.DataFrame, queries: pd.DataFrame, found: Sequence[str], scores: Sequence[float]
) -> pd.DataFrame:
    """Each query printing (``queries``: ``relpath``, ``scene``) with the photograph found for
    it on the pages, the cosine, and ``right``: the found box covers a true photograph of the
    query's scene on that page (IoU >= 0.5)."""
    rows = []
    for (q, scene), name, score in zip(queries[["relpath", "scene"]].values, found, scores):
        page, box = split_region(name)
        true = truth[(truth["page"] == Path(page).name) & (truth["scene"] == scene)]
        best = max((iou(box, tuple(int(v) for v in t)) for t in true[["x", "y", "w", "h"]].values),
                   default=0.0) if box else 0.0  # fmt: skip
        rows.append({"query": q, "scene": scene, "found": name, "cosine": round(score, 4),
                     "iou": round(best, 3), "right": best >= 0.5})  # fmt: skip
    return pd.DataFrame(rows)


def iou(a, b) -> float:
    """Intersection over union of two boxes ``(x, y, w, h)``."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - ix * iy
    return ix * iy / union if union else 0.0
