"""Collections, image decoding, preprocessing and the train/val/test split.

A collection is either a folder with one sub-folder per scene (images found
recursively inside it), or a CSV manifest with ``path`` and ``scene`` columns (paths
relative to the manifest's folder). Images are decoded with Pillow.

Real collections are messy. Every candidate file is checked when the collection is
loaded (:func:`check_image`); empty, truncated, corrupt, unidentifiable, unsupported and
oversized files are left out and listed with their reason in ``Collection.skipped``
(:func:`save_skipped` writes it as ``skipped.csv``), and the run goes on. Huge JPEG and
JPEG 2000 scans are decoded downscaled rather than skipped. The collection folder is
only ever read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import unicodedata
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from cbir_utils import paths as project
from cbir_utils.errors import CollectionError, ImageDecodeError, InputError, MissingFilesError
from cbir_utils.io import atomic_write_text, read_csv, save_csv, save_json
from cbir_utils.paths import resolve, split_region
from cbir_utils.sources import iiif, provenance
from cbir_utils.sources.demo import build_demo_collection
from cbir_utils.sources.iiif import is_iiif_source
from cbir_utils.sources.photo import crop_photo, finder_id

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2", ".ppm", ".pgm"}
    | {".jpe", ".jfif", ".pbm", ".pnm", ".j2k", ".jpf", ".jpx", ".avif", ".psd", ".tga"}
)
# Image formats met in archives that Pillow cannot decode: listed as skipped, with advice.
UNSUPPORTED_EXTENSIONS = frozenset(
    {".heic", ".heif", ".jxl", ".psb", ".xcf", ".svg", ".eps", ".ai", ".pdf", ".djvu", ".djv"}
    | {".raw", ".cr2", ".cr3", ".nef", ".arw", ".dng", ".orf", ".rw2", ".raf", ".exr", ".kra"}
)
# Files and folders that are never part of a collection (not even listed as skipped).
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx", "$recycle.bin"})
SPLITS = ("train", "val", "test", "heldout")
UNLABELLED = ""
SKIP_KINDS = {
    "empty": "empty file (0 bytes)",
    "truncated": "the file ends before the image data does",
    "corrupt": "damaged image data",
    "unidentified": "Pillow cannot identify it as an image",
    "not_image": "not an image file",
    "unsupported": "an image format that cannot be decoded here",
    "too_large": "over the decompression-bomb limit and not downscalable",
    "unreadable": "the file cannot be read (permissions or I/O error)",
    "bad_name": "the file name is not valid UTF-8",
    "http_error": "the server answered with an HTTP error (IIIF)",
    "timeout": "the server did not answer in time (IIIF)",
    "connection": "the server could not be reached (IIIF)",
    "manifest": "a IIIF manifest or collection could not be read",
    "no_photograph": "a page on which no photograph was found (--pages)",
}
SKIPPED_COLUMNS = ("relpath", "scene", "kind", "reason")
VALIDATION_LEVELS = ("decode", "header", "none")
# Skip kinds that concern image files (they trigger the warning; "not_image" does not).
_IMAGE_KINDS = frozenset(SKIP_KINDS) - {"not_image"}


def _image_like(skipped: pd.DataFrame) -> pd.Series:
    """Skipped rows that concern images (an image extension, or an image-specific reason)."""
    ext = skipped["relpath"].map(lambda r: os.path.splitext(str(r))[1].lower())
    return skipped["kind"].isin(_IMAGE_KINDS) | ext.isin(IMAGE_EXTENSIONS)


class SkippedFilesWarning(UserWarning):
    """Some files of a collection were skipped (see ``Collection.skipped``)."""


def _empty_skipped() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in SKIPPED_COLUMNS})


class ItemTable:
    """Paths and scenes of a table of images (``items`` with ``path`` and ``scene`` columns)."""

    items: pd.DataFrame

    @property
    def paths(self) -> list[Path]:
        """Absolute image paths, in table order."""
        return [Path(p) for p in self.items["path"]]

    @property
    def scenes(self) -> np.ndarray:
        """Scene label of every image (``""`` when unlabelled)."""
        return self.items["scene"].to_numpy(dtype=object)


@dataclass
class Collection(ItemTable):
    """An image collection: ``items`` has ``relpath``, ``path`` (absolute), ``scene`` (``""``
    unlabelled) and then its metadata columns (``""`` where missing).

    ``skipped`` lists the files left out (:data:`SKIPPED_COLUMNS`, ``kind`` a key of
    :data:`SKIP_KINDS`); ``downscaled`` the huge scans decoded downscaled;
    ``metadata_problems`` the rows whose dates cannot be read.
    """

    root: Path
    items: pd.DataFrame
    skipped: pd.DataFrame = field(default_factory=_empty_skipped)
    downscaled: list[str] = field(default_factory=list)
    metadata_problems: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(provenance.DATE_PROBLEM_COLUMNS))
    )

    def __len__(self) -> int:
        return len(self.items)

    def scene_counts(self) -> pd.Series:
        """Images per labelled scene, largest first."""
        s = self.items.loc[self.items["scene"] != UNLABELLED, "scene"]
        return s.value_counts().sort_values(ascending=False, kind="stable")

    def skipped_summary(self) -> str:
        """One line: images used, files skipped by kind, scans downscaled."""
        line = f"{len(self.items)} image(s) used"
        image_like = _image_like(self.skipped)
        images = self.skipped[image_like]
        if len(images):
            by_kind = images["kind"].value_counts()
            parts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in by_kind.items())
            line += f"; {len(images)} image file(s) skipped ({parts})"
        others = int((~image_like).sum())
        if others:
            line += f"; {others} non-image file(s) ignored"
        if self.downscaled:
            line += f"; {len(self.downscaled)} huge scan(s) decoded downscaled"
        if len(self.skipped):
            line += "; reasons in skipped.csv"
        return line + "."


# --------------------------------------------------------------------------- decoding

_OPEN_LOCK = threading.Lock()


@dataclass
class _Skip(Exception):
    kind: str
    reason: str


def _open_unchecked(path: Path) -> tuple[Image.Image, int | None]:
    """``Image.open`` without Pillow's bomb check (a huge scan is decoded downscaled by
    :func:`_decode`, which applies the limit itself); returns the limit in force.
    """
    with _OPEN_LOCK:
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    return im, limit


def _sniff(path: Path) -> tuple[str, str]:
    """Kind and reason for a file Pillow cannot identify, from its first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    low = head.lower()
    ext = path.suffix.lower() or "(no extension)"
    if head.startswith(b"%PDF"):
        return "unsupported", "a PDF document, not an image: export its pages as TIFF or JPEG"
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace")
        if brand.startswith(("hei", "hev", "mif", "msf")):
            return "unsupported", "a HEIC/HEIF photo (phone format): convert it to JPEG or TIFF"
        if brand.startswith("avi"):
            return "unsupported", "an AVIF image this Pillow cannot read: convert it to PNG"
        return "not_image", f"a video or MP4-family file ({brand.strip()}) with extension {ext}"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL "):
        return "unsupported", "a JPEG XL image: convert it to PNG or JPEG"
    if head.startswith(b"AT&TFORM"):
        return "unsupported", "a DjVu document: export its pages as TIFF"
    if b"<svg" in low:
        return "unsupported", "an SVG vector drawing: export it as PNG"
    if b"<html" in low or b"<!doctype html" in low:
        return "not_image", f"an HTML page saved as {ext} (often a failed download)"
    if head.startswith(b"PK\x03\x04"):
        return "not_image", f"a ZIP archive or office document saved as {ext}"
    if head and b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "not_image", f"a text file with extension {ext}"
        except UnicodeDecodeError:
            pass
    return "unidentified", (
        f"Pillow cannot identify it as an image (extension {ext}; unknown format or damaged header)"
    )


def _classify(err: BaseException) -> tuple[str, str]:
    """Skip kind and reason of a decoding exception."""
    msg = str(err) or type(err).__name__
    if isinstance(err, MemoryError):
        return "too_large", "not enough memory to decode it"
    if isinstance(err, Image.DecompressionBombError):
        return "too_large", msg
    if isinstance(err, PermissionError):
        return "unreadable", f"permission denied ({msg})"
    low = msg.lower()
    if isinstance(err, EOFError) or any(
        s in low for s in ("truncated", "premature end", "end of file")
    ):
        return "truncated", f"truncated file: {msg}"
    if isinstance(err, OSError) and not isinstance(err, UnidentifiedImageError):
        if err.errno is not None:
            return "unreadable", f"cannot read the file ({msg})"
    return "corrupt", f"damaged image data: {msg}"


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float gray images stretched to 8-bit ``L`` (min to max)."""
    arr = np.asarray(im)
    lo = float(np.nanmin(arr)) if arr.size else 0.0
    hi = float(np.nanmax(arr)) if arr.size else 1.0
    span = max(hi - lo, 1e-9)
    out = np.empty(arr.shape, dtype=np.uint8)
    for r in range(0, arr.shape[0], 1024):  # float64 by blocks: exact, bounded memory
        block = np.nan_to_num(arr[r : r + 1024].astype(np.float64), nan=lo)
        out[r : r + 1024] = ((block - lo) / span * 255.0).clip(0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


def _decode(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[Image.Image, bool]:
    """Decode as 8-bit RGB; returns ``(image, downscaled)``; raises :class:`_Skip`."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise _Skip("empty", SKIP_KINDS["empty"])
        try:
            im, limit = _open_unchecked(p)
        except UnidentifiedImageError:
            raise _Skip(*_sniff(p)) from None
        limit = max_pixels if max_pixels is not None else limit
        with im:
            im.seek(0)
            w, h = im.size
            if w <= 0 or h <= 0:
                raise _Skip("corrupt", f"damaged header: image size {w}x{h}")
            downscaled = False
            if limit and w * h > limit:
                if im.format == "JPEG":
                    s = 2
                    while s < 8 and w * h > limit * s * s:
                        s *= 2
                    im.draft(im.mode, (max(1, w // s), max(1, h // s)))
                    downscaled = True
                elif im.format == "JPEG2000":
                    k = 1
                    while w * h > limit * 4**k:
                        k += 1
                    im.reduce = k  # decoded at 1 / 2**k per side
                    downscaled = True
                elif w * h > 2 * limit:
                    raise _Skip(
                        "too_large",
                        f"{w}x{h} = {w * h / 1e6:.0f} megapixels, over twice the "
                        f"decompression-bomb limit of {limit / 1e6:.0f} megapixels, and "
                        f"{im.format or 'this format'} cannot be decoded downscaled: convert "
                        "it to JPEG, or raise PIL.Image.MAX_IMAGE_PIXELS if it is trusted",
                    )
            im.load()
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # malformed EXIF: keep the image as stored
                pass
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                im = _to_8bit(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            rgb = im.convert("RGB")
        if limit and rgb.width * rgb.height > limit:
            rgb = rgb.reduce(math.ceil(math.sqrt(rgb.width * rgb.height / limit)))
            downscaled = True
        return rgb, downscaled
    except _Skip:
        raise
    except Exception as err:  # Pillow raises many types on bad data (MemoryError included)
        raise _Skip(*_classify(err)) from err


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Decode an image with Pillow as 8-bit RGB; a region item ``page#xywh=x,y,w,h`` is its
    page cut to the box.

    EXIF orientation applied, first frame, 16-bit, 1-bit, CMYK, palette and alpha converted
    (alpha on white). Images over ``max_pixels`` (default: Pillow's bomb limit) are decoded
    downscaled (JPEG, JPEG 2000) or reduced after decoding (others, up to twice the limit).
    Raises :class:`ImageDecodeError` whose ``kind`` and ``reason`` say what is wrong.
    """
    base, box = split_region(path)
    try:
        im = _decode(base, max_pixels)[0] if box is None else _page(base, max_pixels)
    except _Skip as s:
        err = ImageDecodeError(
            f"Cannot use image {path}: {s.reason}. Load the collection with "
            "validate='decode' to skip such files."
        )
        err.path, err.kind, err.reason = str(path), s.kind, s.reason
        raise err from s.__cause__
    return im if box is None else im.crop((box[0], box[1], box[0] + box[2], box[1] + box[3]))


_PAGES: OrderedDict[tuple, Image.Image] = OrderedDict()
_PAGES_LOCK = threading.Lock()
PAGES_KEPT = 2
"""Decoded pages kept for the photographs found on them (one page's photographs are cut in
turn, so each page is decoded once, not once per photograph)."""


def _page(path: str, max_pixels: int | None) -> Image.Image:
    """A page decoded for its photographs, from the last :data:`PAGES_KEPT` pages decoded."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns, max_pixels)
    with _PAGES_LOCK:
        if key in _PAGES:
            _PAGES.move_to_end(key)
            return _PAGES[key]
    im = _decode(path, max_pixels)[0]
    with _PAGES_LOCK:
        _PAGES[key] = im
        while len(_PAGES) > PAGES_KEPT:
            _PAGES.popitem(last=False)
    return im


def _jpeg_has_end(path: Path, tail: int = 4096) -> bool:
    """Whether a JPEG file has its end-of-image marker (trailing padding tolerated)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - tail))
        return b"\xff\xd9" in fh.read()


@dataclass(frozen=True)
class FileCheck:
    """Outcome of :func:`check_image`: ``kind`` is ``"ok"``, ``"downscaled"`` or a skip kind."""

    kind: str
    reason: str = ""

    @property
    def usable(self) -> bool:
        """Whether the image can be used."""
        return self.kind in ("ok", "downscaled")


def check_image(path: str | os.PathLike, level: str = "decode") -> FileCheck:
    """Check that a file is a usable image: ``level`` ``"decode"`` decodes it as
    :func:`load_image` will, ``"header"`` only runs Pillow's ``verify()`` (misses truncated
    JPEG data), ``"none"`` accepts it.
    """
    if level not in VALIDATION_LEVELS:
        raise InputError(f"Unknown validation level {level!r}; use one of {VALIDATION_LEVELS}.")
    if level == "none":
        return FileCheck("ok")
    path = split_region(path)[0]  # a photograph found on a page: its page is checked
    try:
        if level == "decode":
            _, downscaled = _decode(path)
            return FileCheck("downscaled" if downscaled else "ok")
        p = Path(path)
        if p.stat().st_size == 0:
            return FileCheck("empty", SKIP_KINDS["empty"])
        try:
            im, limit = _open_unchecked(p)
        except UnidentifiedImageError:
            return FileCheck(*_sniff(p))
        with im:
            w, h = im.size
            big = bool(limit) and w * h > limit
            if big and im.format not in ("JPEG", "JPEG2000") and w * h > 2 * limit:
                return FileCheck("too_large", f"{w}x{h} over the decompression-bomb limit")
            fmt = im.format
            im.verify()
        if fmt == "JPEG" and not _jpeg_has_end(p):
            return FileCheck("truncated", "truncated file: no JPEG end-of-image marker")
        return FileCheck("downscaled" if big else "ok")
    except _Skip as s:
        return FileCheck(s.kind, s.reason)
    except Exception as err:
        return FileCheck(*_classify(err))


# --------------------------------------------------------------------------- collections


def _nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _walk(root: Path) -> Iterator[Path]:
    """Every non-ignored file under ``root`` (symlinked folders followed once), sorted."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not _is_ignored(d))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not _is_ignored(name) and p.is_file():
                yield p


def _printable(rel: str) -> str:
    """A relpath that can be written as UTF-8 (undecodable bytes shown as U+FFFD)."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _scene_of(rel: str) -> str:
    return _nfc(rel.split("/")[0]) if "/" in rel else UNLABELLED


def _read_manifest(src: Path) -> pd.DataFrame:
    """Manifest rows ``path``, ``scene``: comma, semicolon or tab separated, BOM tolerated."""
    last_cols: list[str] = []
    for sep in (",", ";", "\t"):
        df = read_csv(src, sep=sep)
        df.columns = [str(c).strip().lower() for c in df.columns]
        if {"path", "scene"} <= set(df.columns):
            return df
        last_cols = last_cols or list(df.columns)
    raise CollectionError(
        f"Manifest {src} lacks column(s) "
        f"{sorted({'path', 'scene'} - set(last_cols))}; it needs 'path' and 'scene' "
        f"(found {last_cols})."
    )


def _manifest_file(root: Path, rel: str) -> Path | None:
    """The file a manifest entry names, tolerating Windows separators and NFC/NFD names."""
    variants = [rel, rel.replace("\\", "/")]
    variants += [unicodedata.normalize(f, v) for v in list(variants) for f in ("NFC", "NFD")]
    for v in dict.fromkeys(variants):
        p = root / v
        if p.is_file():
            return p
    return None


_Loaded = tuple[Path, list[tuple[str, Path, str]], list[dict], pd.DataFrame | None]


def _metadata_frame(df: pd.DataFrame, relpaths: Sequence[str]) -> pd.DataFrame | None:
    """The metadata columns of a manifest (``relpath`` first), or None when it has none."""
    cols = provenance.metadata_columns(df.drop(columns=["path"]))
    if not cols:
        return None
    meta = df[cols].copy()
    meta.insert(0, "relpath", list(relpaths))
    meta["_row"] = df.index.to_numpy() + 2  # the line in the CSV file (header = line 1)
    return meta.reset_index(drop=True)


def _load_manifest(src: Path) -> _Loaded:
    root = src.parent
    df = _read_manifest(src)
    df = df.assign(path=df["path"].str.strip(), scene=df["scene"].map(lambda s: _nfc(s.strip())))
    df = df[df["path"] != ""]
    conflicts = df.groupby("path")["scene"].nunique()
    conflicts = conflicts[conflicts > 1]
    if len(conflicts):
        shown = "\n  ".join(
            f"{p}: {sorted(set(df.loc[df['path'] == p, 'scene']))}" for p in conflicts.index[:20]
        )
        raise CollectionError(
            f"Manifest {src} gives {len(conflicts)} file(s) more than one scene:\n  {shown}\n"
            "Give each file one scene (copy the file if it really belongs to two)."
        )
    df = df.drop_duplicates("path")
    meta = _metadata_frame(df, [Path(r.replace("\\", "/")).as_posix() for r in df["path"]])
    rows, missing = [], []
    for rel, scene in zip(df["path"], df["scene"]):
        found = _manifest_file(root, rel)
        if found is None:
            missing.append(rel)
        else:
            rows.append((Path(rel.replace("\\", "/")).as_posix(), found.resolve(), scene))
    if missing:
        shown = "\n  ".join(missing[:20]) + ("\n  ..." if len(missing) > 20 else "")
        raise MissingFilesError(
            f"Manifest {src} names {len(missing)} missing file(s) (paths are relative to "
            f"{root}):\n  {shown}"
        )
    return root, rows, [], meta


def _read_metadata_file(src: Path) -> pd.DataFrame | None:
    """A folder collection's ``metadata.csv`` (``path`` relative to the folder, any columns)."""
    f = src / provenance.METADATA_FILE
    if not f.is_file():
        return None
    last: list[str] = []
    for sep in (",", ";", "\t"):
        df = read_csv(f, sep=sep)
        df.columns = [str(c).strip().lower() for c in df.columns]
        if "path" in df.columns:
            break
        last = last or list(df.columns)
    else:
        raise CollectionError(
            f"{f} has no 'path' column (found {last}): it needs 'path' (relative to {src}) "
            "and the metadata columns, e.g. periodical, date, page."
        )
    df = df.assign(path=df["path"].str.strip().str.replace("\\", "/", regex=False))
    df = df[df["path"] != ""].drop_duplicates("path", keep="last")
    return _metadata_frame(df.drop(columns=["scene"], errors="ignore"), df["path"].map(_nfc))


def _load_folder(src: Path) -> _Loaded:
    rows, skipped = [], []
    for p in _walk(src):
        rel = p.relative_to(src).as_posix()
        if rel == provenance.METADATA_FILE:
            continue
        scene = _scene_of(_printable(rel))
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            skipped.append(
                {
                    "relpath": _printable(rel),
                    "scene": scene,
                    "kind": "bad_name",
                    "reason": "the file name is not valid UTF-8 (e.g. Latin-1 from an old "
                    "archive): rename the file",
                }
            )
            continue
        ext = p.suffix.lower()
        if ext in IMAGE_EXTENSIONS:
            rows.append((rel, p, scene))
        elif ext in UNSUPPORTED_EXTENSIONS:
            skipped.append(
                {
                    "relpath": rel,
                    "scene": scene,
                    "kind": "unsupported",
                    "reason": f"{ext} files cannot be decoded here: convert it to TIFF, PNG or JPEG",
                }
            )
        else:
            skipped.append(
                {
                    "relpath": rel,
                    "scene": scene,
                    "kind": "not_image",
                    "reason": f"not an image file (extension {ext or 'none'})",
                }
            )
    rows.sort(key=lambda r: r[0])  # collection order: relpaths sorted as strings
    return src, rows, skipped, _read_metadata_file(src)


def _cache_file(cache_dir: Path, root: Path, level: str) -> Path:
    key = hashlib.sha1(f"{root}|{level}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(cache_dir) / f"{key}.json"


def _check_all(
    rows: list[tuple[str, Path, str]],
    level: str,
    cache_dir: str | os.PathLike | None,
    root: Path,
    progress: bool,
) -> list[FileCheck]:
    """Check every candidate (in parallel threads), reusing a per-file cache if given."""
    if level == "none":
        return [FileCheck("ok")] * len(rows)
    stamp = {"pillow": PIL.__version__, "limit": Image.MAX_IMAGE_PIXELS, "level": level}
    cache: dict[str, list] = {}
    cfile = _cache_file(Path(cache_dir), root, level) if cache_dir is not None else None
    if cfile is not None and cfile.is_file():
        try:
            saved = json.loads(cfile.read_text(encoding="utf-8"))
            if saved.get("stamp") == stamp:
                cache = saved.get("files", {})
        except (OSError, ValueError):
            cache = {}
    results: list[FileCheck | None] = [None] * len(rows)
    todo: list[int] = []
    sig: list[list] = []
    for i, (rel, p, _) in enumerate(rows):
        try:
            st = p.stat()
            sig.append([st.st_size, st.st_mtime_ns])
        except OSError as err:
            sig.append([-1, -1])
            results[i] = FileCheck("unreadable", f"cannot read the file ({err})")
            continue
        hit = cache.get(rel)
        if hit is not None and hit[:2] == sig[i]:
            results[i] = FileCheck(hit[2], hit[3])
        else:
            todo.append(i)
    if todo:
        workers = max(1, min(8, os.cpu_count() or 1, len(todo)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            checks = pool.map(lambda i: check_image(rows[i][1], level), todo)
            bar = tqdm(
                checks,
                total=len(todo),
                desc="Checking images",
                unit="img",
                disable=not progress or len(todo) < 200,
            )
            for i, c in zip(todo, bar):
                results[i] = c
    if cfile is not None and (todo or set(cache) != {r[0] for r in rows}):
        files = {
            rows[i][0]: [*sig[i], c.kind, c.reason]
            for i, c in enumerate(results)
            if sig[i][0] >= 0 and c is not None and c.kind != "unreadable"
        }
        try:
            save_json(cfile, {"root": _printable(str(root)), "stamp": stamp, "files": files})
        except OSError:
            pass  # the cache is an optimisation only
    return [r if r is not None else FileCheck("ok") for r in results]


def load_collection(
    source: str | os.PathLike,
    validate: str = "decode",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    iiif_config=None,
) -> Collection:
    """Load a collection from a scene-per-folder directory, a CSV manifest, or IIIF.

    A folder has one sub-folder per scene (any depth; files directly in it are unlabelled); a
    ``.csv`` has ``path`` and ``scene`` columns (comma, semicolon or tab; an empty scene is
    unlabelled); a IIIF source is fetched with ``iiif_config`` into ``outputs/cache/iiif/``.
    Files are only read. Every image is checked (``validate``, see :func:`check_image`; results
    kept in ``cache_dir`` by size and modification time); unusable files are listed in
    ``skipped`` with one :class:`SkippedFilesWarning`. Hidden files, ``__MACOSX``,
    ``Thumbs.db`` and ``desktop.ini`` are ignored. Scene names are NFC-normalised.
    """
    if validate not in VALIDATION_LEVELS:
        raise CollectionError(
            f"Unknown validate={validate!r}; use one of {', '.join(VALIDATION_LEVELS)}."
        )

    if iiif.is_iiif_source(source):
        fetched = iiif.fetch(source, iiif_config, progress=progress)
        col = load_collection(fetched.manifest, validate, cache_dir, progress=False)
        if len(fetched.failures):
            col.skipped = (
                pd.concat([col.skipped, fetched.failures], ignore_index=True)
                .sort_values("relpath", kind="stable")
                .reset_index(drop=True)
            )
            warnings.warn(col.skipped_summary(), SkippedFilesWarning, stacklevel=2)
        return col
    src = Path(source).expanduser().resolve()
    if not src.exists():
        raise MissingFilesError(
            f"Collection not found: {src} does not exist. Give a folder with one sub-folder "
            "per scene, or a CSV manifest with 'path' and 'scene' columns."
        )
    if src.is_file():
        root, rows, skipped, meta = _load_manifest(src)
    else:
        root, rows, skipped, meta = _load_folder(src)
    if not rows:
        others = f" ({len(skipped)} other file(s) found)" if skipped else ""
        raise CollectionError(
            f"No images found in {src}{others}. Expected one folder per scene with image "
            f"files ({', '.join(sorted(IMAGE_EXTENSIONS))}) or a CSV manifest with 'path' "
            "and 'scene'."
        )
    checks = _check_all(rows, validate, cache_dir, root, progress)
    keep = [r for r, c in zip(rows, checks) if c.usable]
    skipped += [
        {"relpath": rel, "scene": scene, "kind": c.kind, "reason": c.reason}
        for (rel, _, scene), c in zip(rows, checks)
        if not c.usable
    ]
    skipped_df = (
        pd.DataFrame(skipped, columns=list(SKIPPED_COLUMNS))
        .sort_values("relpath", kind="stable")
        .reset_index(drop=True)
        if skipped
        else None
    )
    downscaled = [r[0] for r, c in zip(rows, checks) if c.kind == "downscaled"]
    if not keep:
        bad = skipped_df[_image_like(skipped_df)]
        shown = "\n  ".join(f"{r}: {why}" for r, why in zip(bad["relpath"], bad["reason"]))
        raise CollectionError(
            f"No usable images in {src}: all {len(rows)} image file(s) were skipped:\n  "
            + shown[:4000]
        )
    items = pd.DataFrame(
        {
            "relpath": [r[0] for r in keep],
            "path": [str(r[1]) for r in keep],
            "scene": [r[2] for r in keep],
        }
    )
    items = items.drop_duplicates("relpath").reset_index(drop=True)
    items, problems = _with_metadata(items, meta, src)
    collection = Collection(
        root=root,
        items=items,
        skipped=skipped_df if skipped_df is not None else _empty_skipped(),
        downscaled=downscaled,
        metadata_problems=problems,
    )
    provenance.warn_date_problems(problems, src, stacklevel=2)
    if _image_like(collection.skipped).any():
        warnings.warn(collection.skipped_summary(), SkippedFilesWarning, stacklevel=2)
    return collection


def _with_metadata(
    items: pd.DataFrame, meta: pd.DataFrame | None, src: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Items with their metadata columns, and the rows whose dates cannot be read."""
    if meta is None:
        return items, provenance.date_problems(pd.DataFrame())
    problems = provenance.date_problems(meta)
    cols = [c for c in meta.columns if c not in ("relpath", "_row")]
    by_rel = meta.drop_duplicates("relpath", keep="last").set_index("relpath")[cols]
    joined = by_rel.reindex(items["relpath"].to_numpy()).fillna("").reset_index(drop=True)
    unused = sorted(set(by_rel.index) - set(items["relpath"]))
    if unused and src.is_dir():
        warnings.warn(
            f"{len(unused)} row(s) of {src / provenance.METADATA_FILE} name no image of the "
            f"collection (e.g. {unused[0]!r}); their metadata is not used.",
            provenance.MetadataWarning,
            stacklevel=3,
        )
    return pd.concat([items, joined], axis=1), problems.reset_index(drop=True)


def save_skipped(collection: Collection, out_dir: str | os.PathLike) -> Path:
    """Write ``skipped.csv`` into ``out_dir`` atomically, header only when nothing was skipped."""
    return save_csv(Path(out_dir) / "skipped.csv", collection.skipped[list(SKIPPED_COLUMNS)])


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a network input.

    ``resize``: ``"letterbox"`` keeps the whole image (padded to a square), ``"center_crop"``
    is the study's Resize(256/224 * size) + CenterCrop. ``descreen``: a blur against halftone
    screens, radius in thousandths of the long side. ``pixels``: ``uint8`` 0-255 input (the
    ONNX models') instead of normalised floats. ``find_photo``: cut a scan that kept page text
    or a caption to the photograph first (:func:`cbir_utils.sources.photo.crop_photo`).
    """

    image_size: int = 224
    resize: str = "letterbox"
    grayscale: bool = True
    descreen: float = 0.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pixels: bool = False
    find_photo: bool = False

    def __post_init__(self) -> None:
        if self.resize not in ("letterbox", "center_crop"):
            raise InputError(
                f"Unknown resize mode {self.resize!r}; use 'letterbox' or 'center_crop'."
            )
        if int(self.image_size) < 32:
            raise InputError(f"image_size must be at least 32, got {self.image_size!r}.")

    def to_dict(self) -> dict:
        """JSON-serialisable description (part of the cache key)."""
        d = asdict(self)
        for name in ("pixels", "find_photo"):  # keys of caches written before the field
            if not d[name]:
                del d[name]
        if self.find_photo:  # the finder's settings too: another finder cuts other images
            d["find_photo"] = finder_id()
        return d

    def prepare(self, im: Image.Image) -> Image.Image:
        """Tone, descreen and resize a PIL image (letterbox: long side = ``image_size``, unpadded)."""
        return self.sized(self.base(im))

    def base(self, im: Image.Image) -> Image.Image:
        """What does not depend on the input size: the photograph cut out, gray, descreened
        (the blur radius is relative to the image)."""
        if self.find_photo:
            im = crop_photo(im)
        if self.grayscale:
            im = im.convert("L")
        if self.descreen > 0:
            radius = self.descreen * max(im.size) / 1000.0
            im = im.filter(ImageFilter.GaussianBlur(radius))
        return im

    def sized(self, im: Image.Image) -> Image.Image:
        """A :meth:`base` image resized to the input size (RGB)."""
        s = int(self.image_size)
        w, h = im.size
        if self.resize == "center_crop":
            scale = round(s * 256 / 224) / min(w, h)
            im = im.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
            im = ImageOps.fit(im, (s, s), method=Image.BILINEAR)
        else:
            scale = s / max(w, h)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        return im.convert("RGB")

    def to_tensor(self, im: Image.Image) -> torch.Tensor:
        """Normalised float tensor ``(3, S, S)``; letterbox padding is zero (the mean colour).

        With ``pixels``: the ``uint8`` image ``(3, S, S)``, padded with the mean colour.
        """
        if self.pixels:
            return self._to_pixels(im)
        arr = np.asarray(im, dtype=np.float32) / 255.0
        t = torch.from_numpy(arr).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        t = (t - mean) / std
        s = int(self.image_size)
        _, h, w = t.shape
        if (h, w) != (s, s):
            top, left = (s - h) // 2, (s - w) // 2
            t = torch.nn.functional.pad(t, (left, s - w - left, top, s - h - top))
        return t

    def _to_pixels(self, im: Image.Image) -> torch.Tensor:
        s = int(self.image_size)
        w, h = im.size
        fill = tuple(int(round(255 * m)) for m in self.mean)
        if (w, h) != (s, s):
            canvas = Image.new("RGB", (s, s), fill)
            canvas.paste(im, ((s - w) // 2, (s - h) // 2))
            im = canvas
        return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1)

    def __call__(self, im: Image.Image) -> torch.Tensor:
        return self.to_tensor(self.prepare(im))


class ImageDataset(torch.utils.data.Dataset):
    """Images by path (decoded with Pillow) or already decoded (PIL images, e.g. a query
    decoded once for all its uses), transformed; yields ``(tensor, label, index)``."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike | Image.Image],
        transform: Callable[[Image.Image], torch.Tensor],
        labels: Sequence[int] | None = None,
    ) -> None:
        self.paths = [p if isinstance(p, Image.Image) else str(p) for p in paths]
        self.transform = transform
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        p = self.paths[i]
        return self.transform(p if isinstance(p, Image.Image) else load_image(p)), self.labels[i], i


def make_split(
    items: pd.DataFrame,
    seed: int = 0,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    heldout_frac: float = 0.3,
) -> pd.DataFrame:
    """Split a collection into ``train``/``val``/``test`` images and ``heldout`` scenes.

    About ``heldout_frac`` of the labelled scenes (2 images or more) are held out whole, for
    the scene-disjoint protocol. The others keep one image in ``train`` each, so every scene of
    ``val`` and ``test`` is seen in training (the study's protocol); ``val_frac`` and
    ``test_frac`` of the rest go to val and test. Single images and unlabelled ones stay in
    train. Returns ``relpath``, ``scene``, ``split`` in the order of ``items``.
    """
    for name, v in (
        ("val_frac", val_frac),
        ("test_frac", test_frac),
        ("heldout_frac", heldout_frac),
    ):
        if not 0.0 <= v < 1.0:
            raise InputError(f"{name} must be in [0, 1), got {v!r}.")
    rng = np.random.default_rng(seed)
    scenes = items["scene"].to_numpy(dtype=object)
    split = np.full(len(items), "train", dtype=object)
    labelled = sorted({s for s in scenes if s != UNLABELLED})
    counts = pd.Series(scenes).value_counts()
    eligible = [s for s in labelled if counts[s] >= 2]
    n_held = min(len(eligible), round(heldout_frac * len(labelled)))
    held = set(rng.permutation(np.array(eligible, dtype=object))[:n_held]) if n_held else set()
    split[[s in held for s in scenes]] = "heldout"

    rest: list[int] = []
    for s in labelled:
        if s in held:
            continue
        idx = rng.permutation(np.flatnonzero(scenes == s))
        rest.extend(idx[1:].tolist())  # idx[0] stays in train
    n_seen = int(sum(1 for s in scenes if s not in held))
    rest = rng.permutation(np.array(rest, dtype=int)).tolist()
    n_val = min(len(rest), round(val_frac * n_seen))
    n_test = min(len(rest) - n_val, round(test_frac * n_seen))
    split[rest[:n_val]] = "val"
    split[rest[n_val : n_val + n_test]] = "test"
    return pd.DataFrame({"relpath": items["relpath"].to_numpy(), "scene": scenes, "split": split})


def load_or_make_split(
    collection: Collection, path: str | os.PathLike, **params: float
) -> pd.DataFrame:
    """Load the saved split at ``path`` (made once, shared by every notebook), or make and
    save it; one made with other parameters or files is an error, never replaced.
    """
    path = Path(path)
    meta_path = path.with_suffix(".json")
    params = {k: (int(v) if k == "seed" else float(v)) for k, v in params.items()}
    if path.exists():
        saved = read_csv(path)
        saved_params = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if saved_params and saved_params != params:
            raise InputError(
                f"The split saved at {path} was made with {saved_params}, not {params}. "
                "Use the same parameters, or point SPLIT_FILE to a new file."
            )
        if set(saved["relpath"]) != set(collection.items["relpath"]):
            raise InputError(
                f"The split saved at {path} is for other files than the collection in {collection.root}. "
                "Point SPLIT_FILE to a new file to make a new split."
            )
        order = {r: i for i, r in enumerate(collection.items["relpath"])}
        saved = saved.sort_values("relpath", key=lambda c: c.map(order)).reset_index(drop=True)
        if saved["scene"].tolist() != collection.items["scene"].tolist():
            raise InputError(
                f"The split saved at {path} was made for other scene labels than the "
                f"collection's in {collection.root}. Point SPLIT_FILE to a new file."
            )
        return saved
    split = make_split(collection.items, **params)
    save_csv(path, split)
    atomic_write_text(meta_path, json.dumps(params, indent=2))
    return split


def _same_labels(path: Path, collection: Collection) -> bool:
    """Whether the split saved at ``path`` gives the collection's images its scene labels."""
    try:
        saved = read_csv(path)
        by_rel = dict(zip(saved["relpath"], saved["scene"]))
    except (OSError, ValueError, KeyError):
        return True  # unreadable: let load_or_make_split say what is wrong
    return all(
        by_rel.get(r, s) == s
        for r, s in zip(collection.items["relpath"], collection.items["scene"])
    )


def split_for(
    collection: Collection,
    seed: int = 0,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    heldout_frac: float = 0.3,
    split_file: str | os.PathLike = "",
) -> tuple[pd.DataFrame, Path]:
    """``(split, path)``: ``split_file``, or ``outputs/splits/<collection>-seed<seed>.csv``."""

    path = (
        resolve(split_file)
        if split_file
        else project.OUTPUTS_DIR / "splits" / f"{collection.root.name}-seed{seed}.csv"
    )
    if not split_file and path.exists() and not _same_labels(path, collection):
        # other labels for the same files (e.g. scenes from review verdicts): their own split
        tag = hashlib.sha1("\n".join(collection.items["scene"]).encode()).hexdigest()[:8]
        path = path.with_name(f"{path.stem}-labels{tag}.csv")
    split = load_or_make_split(
        collection,
        path,
        seed=seed,
        val_frac=val_frac,
        test_frac=test_frac,
        heldout_frac=heldout_frac,
    )
    return split, path


def open_collection(
    data_dir: str | os.PathLike,
    build_demo: bool = False,
    demo_seed: int = 0,
    validate: str = "decode",
    cache: bool = True,
    progress: bool = True,
) -> Collection:
    """Load the collection at ``data_dir``, building the demo there first with ``build_demo``.

    The demo is built only into a folder that does not exist or holds a demo build: a
    user's collection is never written to. Image checks are cached under
    ``outputs/cache/validation/`` (with ``cache``), never inside the collection.
    """

    url = str(data_dir).strip().lower().startswith(("http://", "https://"))
    iiif_src = str(data_dir).strip() if url else resolve(data_dir)
    if is_iiif_source(iiif_src):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SkippedFilesWarning)
            collection = load_collection(
                iiif_src, validate=validate, cache_dir=project.OUTPUTS_DIR / "cache" / "validation",
                progress=progress,
            )  # fmt: skip
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=2)
        return collection
    root = resolve(data_dir)
    if build_demo and (not root.exists() or (root / "demo_params.json").exists()):
        build_demo_collection(root, seed=demo_seed)
    if not root.exists():
        raise MissingFilesError(
            f"DATA_DIR {str(data_dir)!r} does not exist (looked for {root}; relative paths are "
            f"taken from the project root {project.PROJECT_ROOT}). Point DATA_DIR to a folder with "
            "one sub-folder per scene or to a CSV manifest, or set BUILD_DEMO=True to build "
            "the demo collection there."
        )
    cache_dir = project.OUTPUTS_DIR / "cache" / "validation"
    base = root.parent if root.is_file() else root
    if cache and (cache_dir.resolve() == base or base in cache_dir.resolve().parents):
        cache = False  # outputs inside the collection: write nothing there
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedFilesWarning)
        collection = load_collection(
            root, validate=validate, cache_dir=cache_dir if cache else None, progress=progress
        )
    for w in caught:  # re-issued here so that it points at the caller (the notebook cell)
        warnings.warn(w.message, w.category, stacklevel=2)
    return collection


def split_summary(split: pd.DataFrame) -> pd.DataFrame:
    """Images and scenes per split."""
    g = split.groupby("split")
    out = pd.DataFrame({"images": g.size(), "scenes": g["scene"].nunique()})
    return out.reindex([s for s in SPLITS if s in out.index])
