"""Tests of the demo collection builder (cbir_utils.sources.demo)."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from cbir_utils.sources import demo

N_SMALL = 8


def _read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three small builds: seed 0 twice (in two folders) and seed 1."""
    root = tmp_path_factory.mktemp("demo")
    return {
        name: demo.build_demo_collection(root / name, seed=seed, n_scenes=N_SMALL, progress=False)
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    }


def test_determinism(small: dict[str, Path]) -> None:
    a, b, c = small["a"], small["b"], small["c"]
    assert a.read_bytes() == b.read_bytes()
    rows = _read_manifest(a)
    for row in rows[:: max(1, len(rows) // 5)]:
        np.testing.assert_array_equal(
            _pixels(a.parent / row["path"]), _pixels(b.parent / row["path"])
        )
    assert a.read_bytes() != c.read_bytes()


def test_manifest(small: dict[str, Path]) -> None:
    manifest = small["a"]
    root = manifest.parent
    rows = _read_manifest(manifest)
    assert rows and tuple(rows[0]) == demo.MANIFEST_COLUMNS
    for row in rows:
        path = root / row["path"]
        assert "\\" not in row["path"] and path.is_file()
        assert Path(row["path"]).parent.name == row["scene"]
        assert row["shot"] in ("same", "multi-shot")
        assert row["source"].split(":", 1)[0] in (
            "skimage",
            "sklearn",
            "matplotlib",
            "interior_photos",
        )
        t = json.loads(row["transforms"])
        assert t["tone"] in ("gray", "sepia") and "base" in t and "halftone" in t
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == ("RGB" if t["tone"] == "sepia" else "L")
            assert 300 <= max(im.size) <= 600
    counts = Counter(row["scene"] for row in rows)
    assert len(counts) == N_SMALL
    assert all(2 <= n <= 8 for n in counts.values())
    assert json.loads((root / "demo_params.json").read_text())["complete"] is True


def test_halftone_tracks_intensity() -> None:
    ramp = np.tile(np.linspace(0, 255, 200, dtype=np.float32), (120, 1)).astype(np.uint8)
    flats = (np.full((90, 130), 200, np.uint8), np.full((90, 130), 50, np.uint8))
    for img in (ramp, *flats):
        for antialias in (False, True):
            out = demo.halftone(img, 45.0, 4.0, antialias=antialias)
            assert out.shape == img.shape and out.dtype == img.dtype
            assert abs(out.mean() - img.mean()) < 0.03 * 255
        binary = demo.halftone(img, 45.0, 4.0, antialias=False)
        assert set(np.unique(binary).tolist()) <= {0, 255}
    light = demo.halftone(np.full((64, 64), 0.85, np.float32), 30.0, 5.0)
    dark = demo.halftone(np.full((64, 64), 0.15, np.float32), 30.0, 5.0)
    assert light.dtype == np.float32 and light.shape == (64, 64)
    assert abs(light.mean() - 0.85) < 0.03 and abs(dark.mean() - 0.15) < 0.03
    # A mid-gray gives dots, not a flat gray: mostly near-black or near-white pixels, and
    # both ink and paper in every 8x8 block.
    mid = demo.halftone(np.full((64, 64), 0.5, np.float32), 15.0, 5.0)
    assert ((mid < 0.1) | (mid > 0.9)).mean() > 0.5 and mid.std() > 0.35
    blocks = mid.reshape(8, 8, 8, 8).mean(axis=(1, 3))
    assert np.all((blocks > 0.1) & (blocks < 0.9))
    # Coarser pitch, bigger dots: fewer ink/paper transitions along a row.
    fine = demo.halftone(np.full((64, 256), 0.5, np.float32), 0.0, 3.0, antialias=False)
    coarse = demo.halftone(np.full((64, 256), 0.5, np.float32), 0.0, 8.0, antialias=False)
    assert np.abs(np.diff(fine, axis=1)).sum() > np.abs(np.diff(coarse, axis=1)).sum()
    with pytest.raises(ValueError):
        demo.halftone(np.zeros((4, 4, 3)), 45.0, 4.0)


def _asymmetric_image() -> Image.Image:
    a = np.zeros((60, 90, 3), np.uint8)
    a[:, :30] = 230
    a[10:25, 40:85] = (40, 120, 200)
    a[40:55, 50:60] = 90
    return Image.fromarray(a)


def test_press_reprint_clean_and_mirror() -> None:
    img = _asymmetric_image()
    gray = img.convert("L")
    out, t = demo.press_reprint(img, np.random.default_rng(0), **demo.CLEAN)
    assert out.mode == "L" and out.size == img.size
    np.testing.assert_array_equal(np.asarray(out), np.asarray(gray))
    assert t["mirror"] is False and t["halftone"] is False
    out, t = demo.press_reprint(img, np.random.default_rng(0), **{**demo.CLEAN, "mirror": True})
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ImageOps.mirror(gray)))
    assert t["mirror"] is True
    crop = [10, 5, 70, 50]
    out, t = demo.press_reprint(
        img, np.random.default_rng(0), **{**demo.CLEAN, "mirror": True, "crop": crop}
    )
    expected = gray.crop(tuple(crop)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
    assert t["crop"] == crop


def test_press_reprint_random() -> None:
    img = _asymmetric_image().resize((400, 300))
    seen = Counter()
    for i in range(12):
        out, t = demo.press_reprint(img, np.random.default_rng(i))
        assert json.loads(json.dumps(t)) == t
        assert list(out.size) == t["output_size"]
        lo, hi = demo.OUTPUT_LONG_SIDE
        assert lo - 3 <= max(out.size) <= hi + 3
        seen.update(k for k, v in t.items() if v not in (False, None))
    assert seen["halftone"] > 0 and seen["crop"] > 0 and seen["rotate"] > 0
    # The same generator state gives the same printing.
    a, ta = demo.press_reprint(img, np.random.default_rng(7))
    b, tb = demo.press_reprint(img, np.random.default_rng(7))
    assert ta == tb and np.array_equal(np.asarray(a), np.asarray(b))
    out, t = demo.press_reprint(
        img, np.random.default_rng(0), tone="sepia", halftone={"angle": 45, "pitch": 4}
    )
    assert out.mode == "RGB" and t["halftone"] == {"angle": 45, "pitch": 4}
    with pytest.raises(TypeError):
        demo.press_reprint(img, np.random.default_rng(0), halftones=True)


def test_rebuild_and_params(tmp_path: Path) -> None:
    manifest = demo.build_demo_collection(tmp_path, seed=3, n_scenes=3, progress=False)
    files = sorted(tmp_path.rglob("*.jpg"))
    mtimes = {p: p.stat().st_mtime_ns for p in [manifest, *files]}
    t0 = time.perf_counter()
    again = demo.build_demo_collection(tmp_path, seed=3, n_scenes=3, progress=False)
    assert again == manifest and time.perf_counter() - t0 < 1.0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    with pytest.raises(ValueError, match="overwrite"):
        demo.build_demo_collection(tmp_path, seed=4, n_scenes=3, progress=False)
    keep = tmp_path / "notes.txt"
    keep.write_text("not ours")
    demo.build_demo_collection(tmp_path, seed=4, n_scenes=2, overwrite=True, progress=False)
    assert keep.read_text() == "not ours"
    rows = _read_manifest(manifest)
    assert len({r["scene"] for r in rows}) == 2
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg")}
    assert on_disk == {r["path"] for r in rows}  # the old build's images are gone
    with pytest.raises(ValueError, match="n_scenes"):
        demo.build_demo_collection(tmp_path / "x", n_scenes=10_000, progress=False)


def test_full_collection(tmp_path: Path) -> None:
    manifest = demo.build_demo_collection(tmp_path, seed=0, progress=False)
    rows = _read_manifest(manifest)
    counts = Counter(r["scene"] for r in rows)
    assert 60 <= len(counts) <= 80 and len(rows) >= 200
    assert all(2 <= n <= 8 for n in counts.values())
    small = sum(n <= 3 for n in counts.values())
    large = sum(n >= 6 for n in counts.values())
    assert small > large > 0
    multi = {r["scene"] for r in rows if r["shot"] == "multi-shot"}
    assert 0.08 <= len(multi) / len(counts) <= 0.2
    assert {r["source"].split(":")[0] for r in rows} >= {"skimage", "sklearn", "interior_photos"}
