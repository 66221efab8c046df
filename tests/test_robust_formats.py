"""Every real-world format decodes to the right 8-bit RGB pixels (files built on the fly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, features
from robust_helpers import single_thread

from cbir_utils.engine import features as feats
from cbir_utils.sources import data

RED = (230, 20, 20)


def _rgb(path) -> np.ndarray:
    im = data.load_image(path)
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)


def _halves(w: int = 40, h: int = 20) -> np.ndarray:
    """Left half black, right half white, gray."""
    a = np.zeros((h, w), dtype=np.uint8)
    a[:, w // 2 :] = 255
    return a


def test_16_bit_gray_tiff_and_png_are_stretched(tmp_path):
    ramp = np.tile(np.linspace(1000, 5000, 64), (16, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "scan16.tif")
    Image.fromarray(ramp).save(tmp_path / "scan16.png")
    for name in ("scan16.tif", "scan16.png"):
        with Image.open(tmp_path / name) as raw:
            assert raw.mode.startswith("I")  # really a 16-bit (or 32-bit) file
        px = _rgb(tmp_path / name)[0, :, 0]
        assert px[0] == 0 and px[-1] == 255 and (np.diff(px) >= 0).all()  # min->0, max->255
    flat = np.full((8, 8), 4242, dtype=np.uint16)  # constant: no division by zero
    Image.fromarray(flat).save(tmp_path / "flat16.tif")
    assert np.isfinite(_rgb(tmp_path / "flat16.tif")).all()


def test_32_bit_int_and_float_tiff(tmp_path):
    ramp = np.tile(np.linspace(-1.5, 2.5, 32), (4, 1))
    Image.fromarray(ramp.astype(np.float32), "F").save(tmp_path / "float.tif")
    Image.fromarray((ramp * 1e6).astype(np.int32), "I").save(tmp_path / "int32.tif")
    for name in ("float.tif", "int32.tif"):
        px = _rgb(tmp_path / name)[0, :, 0]
        assert px[0] == 0 and px[-1] == 255 and (np.diff(px) >= 0).all()


def test_1_bit_tiff_keeps_black_and_white(tmp_path):
    Image.fromarray(_halves()).convert("1").save(tmp_path / "bw.tif", compression="group4")
    with Image.open(tmp_path / "bw.tif") as raw:
        assert raw.mode == "1"
    px = _rgb(tmp_path / "bw.tif")
    assert (px[:, :20] == 0).all() and (px[:, 20:] == 255).all()


def test_multi_page_tiff_uses_first_page(tmp_path):
    pages = [Image.new("RGB", (16, 16), c) for c in (RED, (20, 20, 230), (20, 230, 20))]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    with Image.open(tmp_path / "pages.tif") as raw:
        assert raw.n_frames == 3
    assert (_rgb(tmp_path / "pages.tif")[0, 0] == RED).all()


def test_cmyk_jpeg_and_tiff_colours(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 235, 235, 25))  # a red in printing inks
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    cmyk.save(tmp_path / "cmyk.tif")
    for name in ("cmyk.jpg", "cmyk.tif"):
        r, g, b = _rgb(tmp_path / name)[8, 8]
        assert r > 200 and g < 40 and b < 40, (name, r, g, b)


def test_palette_alpha_and_gray_pngs(tmp_path):
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([*RED, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.save(tmp_path / "pal.png")
    px = _rgb(tmp_path / "pal.png")
    assert (px[5, 5] == RED).all() and (px[0, 0] == (0, 0, 255)).all()
    pal.save(tmp_path / "pal_transparent.png", transparency=1)  # index 1 transparent
    px = _rgb(tmp_path / "pal_transparent.png")
    assert (px[0, 0] == 255).all() and (px[5, 5] == RED).all()  # transparent -> white
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 128))  # half-transparent black
    rgba.save(tmp_path / "alpha.png")
    assert np.abs(_rgb(tmp_path / "alpha.png") - 127).max() <= 1
    Image.new("LA", (10, 10), (0, 0)).save(tmp_path / "la.png")
    assert (_rgb(tmp_path / "la.png") == 255).all()
    Image.fromarray(_halves()).save(tmp_path / "gray.jpg", quality=95)
    px = _rgb(tmp_path / "gray.jpg")
    assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()
    assert px[:, :15].max() < 30 and px[:, 25:].min() > 225


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.fromarray(_halves(40, 20)).convert("RGB")  # landscape as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "rotated.jpg") as raw:
        assert raw.size == (40, 20)
    shown = data.load_image(tmp_path / "rotated.jpg")
    assert shown.size == (20, 40)
    expected = np.asarray(stored.transpose(Image.Transpose.ROTATE_270)).astype(int)
    assert np.abs(np.asarray(shown).astype(int) - expected).mean() < 3
    assert np.asarray(shown)[:15].mean() < 30 and np.asarray(shown)[25:].mean() > 225


@pytest.mark.parametrize(
    "ext, kw, feature",
    [
        (".webp", {"lossless": True}, "webp"),
        (".webp", {"quality": 90}, "webp"),
        (".jp2", {}, "jpg_2000"),
        (".bmp", {}, None),
        (".ppm", {}, None),
        (".gif", {}, None),
    ],
)
def test_other_formats(tmp_path, ext, kw, feature):
    if feature and not features.check(feature):
        pytest.skip(f"Pillow built without {feature}")
    im = Image.new("RGB", (24, 16), RED)
    path = tmp_path / f"img{ext}"
    im.save(path, **kw)
    px = _rgb(path)
    assert px.shape == (16, 24, 3) and np.abs(px - RED).max() <= 12


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, (20, 20, 230))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert np.abs(_rgb(tmp_path / "anim.gif")[0, 0] - RED).max() <= 12


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (1, 300), (300, 1)])
def test_tiny_and_thin_images_preprocess(tmp_path, size):
    Image.new("L", size, 90).save(tmp_path / "tiny.png")
    im = data.load_image(tmp_path / "tiny.png")
    assert im.size == size
    for resize in ("letterbox", "center_crop"):
        t = data.Preprocess(image_size=64, resize=resize)(im)
        assert t.shape == (3, 64, 64) and torch.isfinite(t).all()


def test_collection_of_every_format_loads_and_extracts(tmp_path, lite0):
    root = tmp_path / "formats"
    (root / "s").mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 65535, 48), (40, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(root / "s" / "a16.tif")
    Image.fromarray(_halves()).convert("1").save(root / "s" / "b1.tif", compression="group4")
    Image.new("CMYK", (30, 20), (0, 200, 200, 0)).save(root / "s" / "c.jpg")
    Image.new("RGBA", (30, 20), (0, 0, 0, 60)).save(root / "s" / "d.png")
    Image.new("L", (1, 1), 10).save(root / "s" / "e.png")
    if features.check("webp"):
        Image.new("RGB", (30, 20), RED).save(root / "s" / "f.webp")
    col = data.load_collection(root, progress=False)
    assert len(col.skipped) == 0 and len(col) >= 5
    with single_thread():
        vec = feats.extract(lite0, col.paths, data.Preprocess(image_size=64), progress=False)
    assert vec.shape == (len(col), 1280) and np.isfinite(vec).all()
