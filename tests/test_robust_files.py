"""Bad files never stop a run: each is skipped with its reason, the rest is used."""

from __future__ import annotations

import io
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from robust_helpers import single_thread

from cbir_utils.engine import features
from cbir_utils.errors import CollectionError, ImageDecodeError
from cbir_utils.sources import data


def _jpeg_bytes(seed: int = 0, size=(160, 120)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png_bytes(seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _tiff_bytes(seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "TIFF")  # uncompressed: header first, strips after
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims ``width`` x ``height`` pixels (a 'bomb')."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# relpath -> (bytes, expected kind); scene "bad" gets all of them next to good images.
BAD_FILES = {
    "bad/zero_bytes.jpg": (b"", "empty"),
    "bad/truncated.jpg": (_jpeg_bytes(1)[: len(_jpeg_bytes(1)) * 6 // 10], "truncated"),
    "bad/truncated.png": (_png_bytes(2)[: len(_png_bytes(2)) * 6 // 10], "truncated"),
    "bad/truncated.tif": (_tiff_bytes(7)[: len(_tiff_bytes(7)) * 6 // 10], "truncated"),
    "bad/random_bytes.jpg": (np.random.default_rng(3).bytes(4000), "unidentified"),
    "bad/notes_renamed.jpg": (b"Caption: the Verdun trench, 1916\n", "not_image"),
    "bad/failed_download.png": (b"<!DOCTYPE html><html><body>404</body></html>", "not_image"),
    "bad/page.pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", "unsupported"),
    "bad/pdf_as.tif": (b"%PDF-1.4\n1 0 obj<<>>endobj\n", "unsupported"),
    "bad/iphone.heic": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "unsupported"),
    "bad/iphone_renamed.jpg": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "unsupported"),
    "bad/bomb.png": (_png_header_only(40_000, 40_000), "too_large"),
    "bad/readme.txt": (b"scans from the archive", "not_image"),
}


def _corrupt_png() -> bytes:
    b = bytearray(_png_bytes(4))
    mid = len(b) // 2
    b[mid : mid + 50] = bytes(50)  # zeroed bytes inside the compressed data
    return bytes(b)


def _corrupt_header_jpeg() -> bytes:
    b = bytearray(_jpeg_bytes(5))
    b[20:200] = np.random.default_rng(5).bytes(180)  # quantisation/Huffman tables destroyed
    return bytes(b)


@pytest.fixture(scope="module")
def messy(tmp_path_factory, tiny_collection) -> Path:
    """The tiny collection plus one scene folder of bad files, ignored system files."""
    root = tmp_path_factory.mktemp("messy") / "collection"
    shutil.copytree(tiny_collection, root)
    for rel, (payload, _) in BAD_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(payload)
    (root / "bad" / "corrupt_data.png").write_bytes(_corrupt_png())
    (root / "bad" / "corrupt_header.jpg").write_bytes(_corrupt_header_jpeg())
    (root / "bad" / "good.jpg").write_bytes(_jpeg_bytes(6))  # the bad scene keeps one image
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "scene_camera" / "._camera_0.jpg").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble
    (root / "scene_camera" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "x.png").write_bytes(b"")
    return root


def test_bad_files_are_skipped_with_reasons(messy, tmp_path):
    with pytest.warns(data.SkippedFilesWarning, match=r"21 image\(s\) used; 14 image file"):
        col = data.load_collection(messy, progress=False)
    assert len(col) == 21  # 20 good printings + bad/good.jpg
    assert "bad/good.jpg" in set(col.items["relpath"])
    kinds = dict(zip(col.skipped["relpath"], col.skipped["kind"]))
    for rel, (_, kind) in BAD_FILES.items():
        assert kinds.get(rel) == kind, (rel, kinds.get(rel))
    assert kinds["bad/corrupt_data.png"] == "corrupt"
    assert kinds["bad/corrupt_header.jpg"] == "unidentified"
    # system and hidden files are neither used nor listed
    listed = set(col.skipped["relpath"]) | set(col.items["relpath"])
    assert not {r for r in listed if "DS_Store" in r or "Thumbs" in r or "/._" in r}
    assert not {r for r in listed if r.startswith(".ipynb_checkpoints")}
    reasons = dict(zip(col.skipped["relpath"], col.skipped["reason"]))
    assert "0 bytes" in reasons["bad/zero_bytes.jpg"]
    assert "HTML" in reasons["bad/failed_download.png"]
    assert "PDF" in reasons["bad/pdf_as.tif"] and "HEIC" in reasons["bad/iphone_renamed.jpg"]
    assert "40000x40000" in reasons["bad/bomb.png"]
    # skipped.csv: every skipped file, one reason each, written atomically into the run folder
    path = data.save_skipped(col, tmp_path / "run")
    table = pd.read_csv(path, keep_default_na=False)
    assert list(table.columns) == list(data.SKIPPED_COLUMNS)
    assert len(table) == len(BAD_FILES) + 2 and (table["reason"] != "").all()
    summary = col.skipped_summary()
    assert summary.count("\n") == 0 and "14 image file(s) skipped" in summary
    assert "1 non-image file(s) ignored" in summary  # readme.txt


def test_run_continues_on_usable_images(messy, lite0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.SkippedFilesWarning)
        col = data.load_collection(messy, progress=False)
    prep = data.Preprocess(image_size=64)
    with single_thread():
        vec = features.extract(lite0, col.paths, prep, batch_size=11, progress=False, num_workers=0)
    assert vec.shape == (len(col), 1280) and np.isfinite(vec).all()


def test_header_level_is_fast_path_and_catches_most(messy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.SkippedFilesWarning)
        col = data.load_collection(messy, validate="header", progress=False)
    kinds = dict(zip(col.skipped["relpath"], col.skipped["kind"]))
    for rel in ("bad/zero_bytes.jpg", "bad/truncated.jpg", "bad/bomb.png", "bad/random_bytes.jpg"):
        assert rel in kinds, rel
    # what the header check lets through fails later with a message naming the file
    assert "bad/truncated.tif" not in kinds  # its header is intact
    with pytest.raises(ImageDecodeError, match=r"truncated\.tif.*truncated"):
        for p in col.paths:
            data.load_image(p)


def test_load_image_error_names_file_and_reason(messy):
    with pytest.raises(ImageDecodeError, match=r"truncated\.jpg.*truncated") as info:
        data.load_image(messy / "bad" / "truncated.jpg")
    assert info.value.kind == "truncated" and isinstance(info.value, OSError)


def test_nothing_usable_fails_with_one_clear_message(tmp_path):
    root = tmp_path / "all_bad"
    for rel in ("bad/zero_bytes.jpg", "bad/truncated.jpg", "bad/notes_renamed.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(BAD_FILES[rel][0])
    with pytest.raises(CollectionError, match=r"(?s)No usable images.*all 3 image file.*0 bytes"):
        data.load_collection(root, progress=False)


def test_huge_scans_decoded_downscaled_or_skipped(tmp_path, monkeypatch):
    """Images over Pillow's decompression-bomb limit (lowered here to 10,000 pixels)."""
    big = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)  # 120k px
    Image.fromarray(big).save(tmp_path / "scan.jpg", quality=90)
    Image.fromarray(big).save(tmp_path / "scan.png")
    Image.fromarray(big[:, :140]).save(tmp_path / "mid.png")  # 42k px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(Image.DecompressionBombError):  # what plain Pillow does
        Image.open(tmp_path / "scan.jpg")
    im = data.load_image(tmp_path / "scan.jpg")
    assert im.size == (100, 75)  # decoded at 1/4 scale by the JPEG decoder (7,500 px)
    assert data.check_image(tmp_path / "scan.jpg").kind == "downscaled"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)
    reduced = data.load_image(tmp_path / "mid.png")  # 1.4x the limit: decoded, then halved
    assert reduced.width * reduced.height <= 30_000 and reduced.size == (70, 150)
    check = data.check_image(tmp_path / "scan.png")  # 4x the limit, PNG: skipped
    assert check.kind == "too_large" and "MAX_IMAGE_PIXELS" in check.reason
    assert Image.MAX_IMAGE_PIXELS == 30_000  # the limit is restored after decoding


def test_validation_cache_rechecks_only_changed_files(tmp_path, tiny_collection):
    root = tmp_path / "c"
    shutil.copytree(tiny_collection, root)
    cache = tmp_path / "cache"
    calls = []
    real = data.check_image

    def counting(path, level="decode"):
        calls.append(Path(path).name)
        return real(path, level)

    mp = pytest.MonkeyPatch()
    mp.setattr(data, "check_image", counting)
    try:
        data.load_collection(root, cache_dir=cache, progress=False)
        assert len(calls) == 20
        calls.clear()
        data.load_collection(root, cache_dir=cache, progress=False)
        assert calls == []  # nothing changed: no file decoded
        (root / "scene_rocket" / "rocket_1.jpg").write_bytes(b"")  # damaged since
        with pytest.warns(data.SkippedFilesWarning):
            col = data.load_collection(root, cache_dir=cache, progress=False)
        assert calls == ["rocket_1.jpg"] and len(col) == 19
    finally:
        mp.undo()
