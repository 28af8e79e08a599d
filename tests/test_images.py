"""Image files as training data (data/images.py): every image mode decoded faithfully (16-bit grey and colour,
alpha and transparent colour keys flattened onto white, palettes, CMYK), modes that cannot be converted refused,
and unsupported formats named in one line by the loader and the validator."""
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset
from glancetune.data.images import Crop, load_pixels, open_image, to_rgb
from glancetune.errors import GlanceError
from helpers import loader_error, local, make_dir, problems_of, simple, validate, write_png


def over_white(rgb, alpha):
    """The 8-bit reference of flattening: c * a + 255 * (1 - a), rounded."""
    a = np.asarray(alpha, np.float64)[..., None] / 255.0
    return np.rint(np.asarray(rgb, np.float64) * a + 255.0 * (1 - a)).astype(np.uint8)


def grey3(grey):
    return np.repeat(np.asarray(grey, np.uint8)[..., None], 3, axis=-1)


def assert_decodes_to(path: Path, ref: np.ndarray):
    """The decoded array and the training tensor (no resize) both match the 8-bit reference within 1/255."""
    got = np.asarray(open_image(path)).astype(int)
    assert got.shape == ref.shape and np.abs(got - ref.astype(int)).max() <= 1, np.abs(got - ref.astype(int)).max()
    h, w = ref.shape[:2]
    t = load_pixels(path, Crop((w, h), (w, h), (0, 0, w, h)))[0].permute(1, 2, 0).numpy()
    assert np.abs((t + 1) / 2 - ref / 255.0).max() <= 1 / 255 + 1e-6


RNG = np.random.default_rng(7)


# --- image modes ------------------------------------------------------------------------------------------------------
def test_16bit_grey_png_is_scaled_not_clipped(tmp_path, capsys):
    v = RNG.integers(0, 65536, (24, 40))
    v[0, :3] = (0, 65535, 257 * 128)
    path = write_png(make_dir(tmp_path) / "img0.png", v, 0, 16)
    assert Image.open(path).mode == "I;16"
    assert_decodes_to(path, grey3(np.rint(v / 257)))
    (path.parent / "img0.txt").write_text("grey")
    rc, out = validate(capsys, "--path", path.parent)
    assert rc == 0 and "result: clean" in out
    assert np.asarray(open_image(path)).std() > 30  # not the all-white image it used to be


def test_16bit_grey_with_transparent_value(tmp_path, caplog):
    v = RNG.integers(0, 65536, (16, 16))
    v[2:5, 3:9] = 4242
    path = write_png(tmp_path / "t.png", v, 0, 16, [(b"tRNS", struct.pack(">H", 4242))])
    caplog.set_level(logging.INFO)
    ref = grey3(np.rint(v / 257))
    ref[v == 4242] = 255
    assert_decodes_to(path, ref)
    assert "notice: t.png: alpha channel flattened onto white" in caplog.messages


@pytest.mark.parametrize("color_type,channels", [(2, 3), (6, 4), (4, 2)])
def test_16bit_colour_and_alpha_pngs(tmp_path, color_type, channels):
    v = RNG.integers(0, 65536, (12, 20, channels))
    path = write_png(tmp_path / "c.png", v, color_type, 16)
    colour = v[..., :3] if channels >= 3 else np.repeat(v[..., :1], 3, axis=-1)
    a = v[..., 3:] / 65535.0 if channels == 4 else (v[..., 1:] / 65535.0 if channels == 2 else 1.0)
    ref = np.rint((colour / 65535.0 * a + (1.0 - a)) * 255.0).astype(np.uint8)  # from the 16-bit values
    assert_decodes_to(path, ref)


@pytest.mark.parametrize("mode", ["I", "I;16B", "I;16"])
def test_16bit_modes_in_memory(mode, tmp_path):
    v = RNG.integers(0, 65536, (10, 14))
    dtype = {"I": np.int32, "I;16B": ">u2", "I;16": "<u2"}[mode]
    im = Image.frombytes(mode, (14, 10), v.astype(dtype).tobytes())
    assert im.mode == mode and np.array_equal(np.asarray(im).astype(int), v)
    got = np.asarray(to_rgb(im, tmp_path / "x.png")).astype(int)
    assert np.abs(got - grey3(np.rint(v / 257)).astype(int)).max() <= 1


def test_modes_that_cannot_be_decoded_are_refused(tmp_path):
    f = Image.fromarray(RNG.random((8, 8)).astype(np.float32), "F")
    with pytest.raises(GlanceError, match=r"x\.png: image mode F \(32-bit float\) cannot be converted"):
        to_rgb(f, tmp_path / "x.png")
    wide = Image.frombytes("I", (2, 1), np.array([0, 70000], np.int32).tobytes())
    with pytest.raises(GlanceError, match=r"y\.png: image mode I .*values 0\.\.70000 outside 0\.\.65535"):
        to_rgb(wide, tmp_path / "y.png")


def test_float_image_in_a_tiff_named_png_is_refused_by_format(tmp_path, capsys):
    d = make_dataset(tmp_path / "d", n=1)
    Image.fromarray(RNG.random((32, 32)).astype(np.float32), "F").save(d / "img0.png", format="TIFF")
    err = loader_error(tmp_path, [simple(d)])
    assert err.startswith(f"{d / 'img0.png'}: image format TIFF is not supported") and "\n" not in err
    rc, out = validate(capsys, "--path", d)
    assert rc == 1 and problems_of(out) == [err.replace("image_dir", "dataset folder")]
    assert "unsupported image format or mode" in out


def test_palette_with_and_without_transparency(tmp_path, caplog):
    palette = RNG.integers(0, 256, (16, 3)).astype(np.uint8)
    idx = RNG.integers(0, 16, (12, 18)).astype(np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette.tobytes())
    im.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert_decodes_to(tmp_path / "p.png", palette[idx])
    caplog.set_level(logging.INFO)
    im.save(tmp_path / "pt.png", transparency=3)
    ref = palette[idx].copy()
    ref[idx == 3] = 255
    assert_decodes_to(tmp_path / "pt.png", ref)
    assert "notice: pt.png: alpha channel flattened onto white" in caplog.messages
    assert "notice: p.png: alpha channel flattened onto white" not in caplog.messages


@pytest.mark.parametrize("mode", ["L", "1", "LA", "RGBA", "RGB"])
def test_8bit_modes(tmp_path, mode):
    px = RNG.integers(0, 256, (10, 12, 4)).astype(np.uint8)
    if mode in ("L", "1"):
        grey = px[..., 0] if mode == "L" else np.where(px[..., 0] > 127, 255, 0).astype(np.uint8)
        Image.fromarray(grey, "L").convert(mode).save(tmp_path / "m.png")
        ref = grey3(grey)
    elif mode == "LA":
        Image.fromarray(px[..., [0, 3]], "LA").save(tmp_path / "m.png")
        ref = over_white(grey3(px[..., 0]), px[..., 3])
    elif mode == "RGBA":
        Image.fromarray(px, "RGBA").save(tmp_path / "m.png")
        ref = over_white(px[..., :3], px[..., 3])
    else:
        Image.fromarray(px[..., :3], "RGB").save(tmp_path / "m.webp", lossless=True)
        assert_decodes_to(tmp_path / "m.webp", px[..., :3])
        return
    assert Image.open(tmp_path / "m.png").mode == mode
    assert_decodes_to(tmp_path / "m.png", ref)


def test_grey_and_rgb_with_a_transparent_colour_key(tmp_path):
    grey = RNG.integers(0, 256, (8, 8)).astype(np.uint8)
    grey[0, 0] = 9
    write_png(tmp_path / "g.png", grey, 0, 8, [(b"tRNS", struct.pack(">H", 9))])
    ref = grey3(grey)
    ref[grey == 9] = 255
    assert_decodes_to(tmp_path / "g.png", ref)


def test_cmyk_jpeg(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:16, :16], rgb[:16, 16:], rgb[16:, :16], rgb[16:, 16:] = (200, 30, 40), (20, 180, 90), (10, 20, 220), 128
    Image.fromarray(rgb, "RGB").convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    stored = Image.open(tmp_path / "c.jpg")
    assert stored.mode == "CMYK"
    cmyk = np.asarray(stored).astype(np.float64)
    ref = np.rint((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255).astype(np.uint8)  # the pixels the file holds
    assert_decodes_to(tmp_path / "c.jpg", ref)
    assert np.abs(np.asarray(open_image(tmp_path / "c.jpg")).astype(int) - rgb).max() <= 6  # not inverted


# --- formats ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext,fmt", [(".gif", "GIF"), (".bmp", "BMP"), (".tiff", "TIFF"), (".tif", "TIFF")])
def test_unsupported_format_next_to_a_caption(tmp_path, capsys, ext, fmt):
    d = make_dataset(tmp_path / "d", n=1)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(d / f"photo{ext}", format=fmt)
    (d / "photo.txt").write_text("a photo")
    err = loader_error(tmp_path, [simple(d)])
    assert err == f"{d / f'photo{ext}'}: image format {ext} is not supported (supported: .png/.jpg/.jpeg/.webp)"
    rc, out = validate(capsys, "--path", d)
    assert rc == 1 and problems_of(out) == [err] and "caption without an image" not in out


def test_gif_named_png(tmp_path, capsys):
    d = make_dataset(tmp_path / "d", n=1)
    Image.new("P", (64, 64)).save(d / "img0.png", format="GIF")
    err = loader_error(tmp_path, [local(d)])
    assert err.startswith(f"{d / 'img0.png'}: image format GIF is not supported")
    assert validate(capsys, "--path", d)[0] == 1
