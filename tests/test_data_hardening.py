"""Bad and unusual data, each as one line (or one notice): image modes decoded faithfully, unsupported formats named,
one edit discovery for the loader and the validator, sizing notices, unreadable files and folders."""
import json
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset, make_image, run_err, write_configs
from glancetune.cli import main
from glancetune.data import build_plan, load_backends, load_plan
from glancetune.data.images import open_image
from glancetune.data.edit import load_job_plan
from glancetune.data.images import Crop, load_pixels, to_rgb
from glancetune.errors import GlanceError


# --- helpers --------------------------------------------------------------------------------------------------

def write_png(path: Path, arr, color_type: int, bit_depth: int = 8, chunks=()) -> Path:
    """A PNG written by hand (Pillow cannot write 16-bit RGB, RGBA or a 16-bit tRNS): grey 0, RGB 2, LA 4, RGBA 6."""
    arr = np.asarray(arr)
    h, w = arr.shape[:2]
    dt = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\0" + row.astype(dt).tobytes() for row in arr.reshape(h, w, -1))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
    for kind, data in chunks:
        out += chunk(kind, data)
    path.write_bytes(out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


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


def backend(tmp_path, entries) -> Path:
    path = tmp_path / "multidatabackend.json"
    path.write_text(json.dumps(entries))
    return path


def local(data, **keys):
    return {"id": "ds", "type": "local", "instance_data_dir": str(data), "caption_strategy": "textfile", **keys}


def simple(data, **keys):
    return {"backend": "simple", "image_dir": str(data), **keys}


def loader_error(tmp_path, entries) -> str:
    with pytest.raises(GlanceError) as e:
        build_plan(load_backends(backend(tmp_path, entries)), 16)
    return str(e.value)


def validate(capsys, *args):
    capsys.readouterr()
    rc = main(["validate-dataset", *map(str, args)])
    return rc, capsys.readouterr().out


def problems_of(out: str) -> list[str]:
    if "problems (" not in out:
        return []
    block = out.split("problems (", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in block.splitlines()[1:]]


RNG = np.random.default_rng(7)


# --- 1. image modes -------------------------------------------------------------------------------------------

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


def make_dir(tmp_path, name="d") -> Path:
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    return d


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


# --- 2. formats -----------------------------------------------------------------------------------------------

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


# --- 3. edit layouts: the loader and the validator agree ------------------------------------------------------

def edit_folder(root: Path, targets="image", controls=("img0", "img1"), n=2) -> Path:
    make_dataset(root / targets, n=n, size=(64, 64))
    if controls is not None:
        (root / "control").mkdir(parents=True, exist_ok=True)
        for name in controls:
            make_image(root / "control" / f"{name}.jpg", (80, 64))
    return root


EDIT_LAYOUTS = {
    "image": lambda r: edit_folder(r),
    "images": lambda r: edit_folder(r, "images"),
    "both": lambda r: (edit_folder(r), make_dataset(r / "images", n=1, size=(64, 64))),
    "control folder missing": lambda r: edit_folder(r, controls=None),
    "targets folder missing": lambda r: (make_dir(r, "control"), make_image(r / "control" / "img0.png")),
    "control image missing": lambda r: edit_folder(r, controls=("img0",)),
    "extra control image": lambda r: edit_folder(r, controls=("img0", "img1", "stray")),
    "unsupported control": lambda r: (edit_folder(r), make_image(r / "control" / "img1.png").rename(
        r / "control" / "img1.bmp")),
}


@pytest.mark.parametrize("name", sorted(EDIT_LAYOUTS))
def test_edit_loader_and_validator_agree(tmp_path, capsys, name):
    root = tmp_path / "data"
    EDIT_LAYOUTS[name](root)
    specs = load_backends(backend(tmp_path, [simple(root, resolution=64)]))
    rc, out = validate(capsys, "--path", root)
    try:
        plan = load_job_plan(specs, 16, 0, edit=True)
    except GlanceError as e:
        assert rc == 1 and problems_of(out)[0] == str(e).replace("image_dir", "dataset folder"), (out, str(e))
        assert name not in ("image", "images")
        return
    assert name in ("image", "images") and rc == 0, out
    assert len(plan.samples) == 2 and all(s.control_path.parent.name == "control" for s in plan.samples)
    assert f"layout: edit ({name}/ + control/)" in out and f"target images ({name}/)" in out


# --- 4. notices -----------------------------------------------------------------------------------------------

def test_upscale_notice(tmp_path, caplog):
    d = make_dir(tmp_path)
    for name, size in (("small", (40, 40)), ("fine", (90, 90))):
        make_image(d / f"{name}.png", size)
        (d / f"{name}.txt").write_text(name)
    caplog.set_level(logging.INFO)
    plan = load_plan(load_backends(backend(tmp_path, [local(d, resolution=128)])), 16)
    small = next(s for s in plan.samples if s.key == "small")
    factor = small.crop.resize[0] / 40
    assert factor > 2
    lines = [m for m in caplog.messages if "upscaled" in m]
    assert lines == [f"notice: {d / 'small.png'}: upscaled {factor:.2f}x (40x40 -> {small.crop.resize[0]}x"
                     f"{small.crop.resize[1]}) to reach its training size {small.width}x{small.height}"]


def test_upscale_notices_are_capped(tmp_path):
    d = make_dir(tmp_path)
    for i in range(7):
        make_image(d / f"s{i}.png", (32, 32))
        (d / f"s{i}.txt").write_text("x")
    plan = build_plan(load_backends(backend(tmp_path, [local(d, resolution=128)])), 16)
    assert sum("upscaled" in n and "s" in n for n in plan.notices if n.startswith(str(d))) == 5
    assert any("... and 2 more image(s) upscaled" in n for n in plan.notices)


def test_extreme_aspect_notice(tmp_path, caplog):
    d = make_dir(tmp_path)
    make_image(d / "wide.png", (640, 128))
    (d / "wide.txt").write_text("wide")
    caplog.set_level(logging.INFO)
    s = load_plan(load_backends(backend(tmp_path, [local(d, resolution=256)])), 16).samples[0]
    aspect = s.width / s.height
    assert aspect > 4 and min(s.width, s.height) >= 64
    assert f"notice: {d / 'wide.png'}: extreme aspect ratio {aspect:.3g}:1 (training size {s.width}x{s.height})" \
        in caplog.messages


def test_extreme_aspect_with_a_tiny_side_is_an_error(tmp_path, capsys):
    d = make_dir(tmp_path)
    make_image(d / "strip.png", (640, 64))
    (d / "strip.txt").write_text("strip")
    cfg = backend(tmp_path, [local(d, resolution=128)])
    with pytest.raises(GlanceError) as e:
        build_plan(load_backends(cfg), 16)
    msg = str(e.value)
    assert msg.startswith(f"{d / 'strip.png'}: training size ") and "has a side below 64 px" in msg
    rc, out = validate(capsys, "--data-backend-config", cfg)
    assert rc == 1 and problems_of(out) == [msg] and "extreme aspect with a side below 64 px" in out
    assert build_plan(load_backends(backend(tmp_path, [local(d, resolution=128, crop=True)])), 16).samples


def test_resolution_snap_notice(tmp_path, caplog):
    d = make_dataset(tmp_path / "d", n=1)
    caplog.set_level(logging.INFO)
    load_plan(load_backends(backend(tmp_path, [local(d, resolution=100)])), 16)
    assert any(m.startswith("notice: ") and "resolution 100 (pixel_area) is not a multiple of 16" in m
               and "(100 -> 96 for a square image)" in m for m in caplog.messages), caplog.messages
    caplog.clear()
    load_plan(load_backends(backend(tmp_path, [local(d, resolution=100)])), 4)
    load_plan(load_backends(backend(tmp_path, [local(d, resolution=1.0, resolution_type="area")])), 16)
    assert not any("not a multiple" in m for m in caplog.messages)


def test_symlinked_folders_followed_once(tmp_path, caplog):
    d = make_dataset(tmp_path / "d", n=1)
    other = make_dataset(tmp_path / "elsewhere", n=2)
    (d / "linked").symlink_to(other, target_is_directory=True)
    (other / "loop").symlink_to(d, target_is_directory=True)  # d/linked/loop -> d: a loop
    (d / "again").symlink_to(other, target_is_directory=True)  # a second link to the same folder
    caplog.set_level(logging.INFO)
    plan = load_plan(load_backends(backend(tmp_path, [local(d)])), 16)
    assert sorted(s.key for s in plan.samples) == ["again/img0", "again/img1", "img0"]
    skipped = [m for m in caplog.messages if "symlinked folder skipped" in m]
    assert len(skipped) == 2 and any(f"{d / 'linked'}:" in m for m in skipped)
    assert any("loop" in m and f"already listed as {d}" in m for m in skipped)


# --- 5. unreadable and odd inputs -----------------------------------------------------------------------------

def deny(monkeypatch, target: Path, what="scandir"):
    """Root ignores permission bits, so a denied read is simulated where the code reads."""
    if what == "scandir":
        real = os.scandir

        def scandir(p="."):
            if Path(p) == target:
                raise PermissionError(13, "Permission denied", str(p))
            return real(p)
        monkeypatch.setattr(os, "scandir", scandir)
    else:
        real_read = Path.read_bytes

        def read_bytes(self):
            if self == target:
                raise PermissionError(13, "Permission denied", str(self))
            return real_read(self)
        monkeypatch.setattr(Path, "read_bytes", read_bytes)


def test_folder_that_cannot_be_listed(tmp_path, capsys, monkeypatch):
    d = make_dataset(tmp_path / "d", n=1)
    make_dataset(d / "sub", n=1)
    deny(monkeypatch, d / "sub")
    err = loader_error(tmp_path, [local(d)])
    assert err == f"{d / 'sub'}: cannot list folder (Permission denied)"
    deny(monkeypatch, d)
    rc, out = validate(capsys, "--path", d)
    assert rc == 1 and problems_of(out)[0] == f"{d}: cannot list folder (Permission denied)"


def test_caption_that_cannot_be_read(tmp_path, capsys, monkeypatch):
    d = make_dataset(tmp_path / "d", n=1)
    deny(monkeypatch, d / "img0.txt", "read")
    err = loader_error(tmp_path, [simple(d)])
    assert err == f"{d / 'img0.txt'}: cannot read caption (Permission denied)"
    rc, out = validate(capsys, "--path", d)
    assert rc == 1 and problems_of(out) == [err] and "unreadable file or folder" in out


def test_image_that_cannot_be_read(tmp_path, monkeypatch):
    d = make_dataset(tmp_path / "d", n=1)
    real = Image.open

    def open_(fp, *a, **k):
        if Path(fp) == d / "img0.png":
            raise PermissionError(13, "Permission denied", str(fp))
        return real(fp, *a, **k)
    monkeypatch.setattr(Image, "open", open_)
    assert loader_error(tmp_path, [simple(d)]) == f"{d / 'img0.png'}: unreadable or corrupt image (Permission denied)"


def test_caption_file_that_is_a_folder(tmp_path, capsys):
    d = make_dataset(tmp_path / "d", n=1)
    (d / "img0.txt").unlink()
    (d / "img0.txt").mkdir()
    err = loader_error(tmp_path, [simple(d)])
    assert err == f"{d / 'img0.png'}: caption img0.txt is a folder, not a text file"
    assert problems_of(validate(capsys, "--path", d)[1]) == [err]


@pytest.mark.parametrize("data,needle", [
    (b"", "caption is empty"), (b"\n\t \n", "caption is empty"),
    ("a caption".encode("utf-16"), "caption is not UTF-8 (it is UTF-16; save it as UTF-8)"),
    (b"caf\xe9 au lait", "caption is not UTF-8 (invalid continuation byte at byte 3)")])
def test_bad_caption_bytes(tmp_path, data, needle):
    d = make_dataset(tmp_path / "d", n=1)
    (d / "img0.txt").write_bytes(data)
    assert loader_error(tmp_path, [local(d)]) == f"{d / 'img0.txt'}: {needle}"


def test_data_folder_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "data"
    f.write_text("not a folder")
    assert loader_error(tmp_path, [simple(f)]) == f"{f}: image_dir is not a folder"
    specs = load_backends(backend(tmp_path, [simple(f)]))
    with pytest.raises(GlanceError, match="image_dir is not a folder"):
        load_job_plan(specs, 16, 0, edit=True)
    rc, out = validate(capsys, "--path", f)
    assert rc == 1 and problems_of(out) == [f"{f}: dataset folder is not a folder"]


def test_broken_symlink_named_like_an_image(tmp_path, capsys):
    d = make_dataset(tmp_path / "d", n=1)
    (d / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (d / "notes.md").symlink_to(tmp_path / "nowhere.md")  # not an image or caption: not our business
    err = loader_error(tmp_path, [local(d)])
    assert err == f"{d / 'gone.png'}: broken symbolic link (to {tmp_path / 'nowhere.png'}, which does not exist)"
    assert problems_of(validate(capsys, "--path", d)[1]) == [err]


def test_zero_byte_image(tmp_path):
    d = make_dataset(tmp_path / "d", n=1)
    (d / "img0.png").write_bytes(b"")
    assert loader_error(tmp_path, [simple(d)]).startswith(f"{d / 'img0.png'}: unreadable or corrupt image (")


@pytest.mark.parametrize("breaker,needle", [
    (lambda d: Image.new("RGB", (64, 64)).save(d / "x.gif"), "x.gif: image format .gif is not supported"),
    (lambda d: write_png(d / "img0.png", np.full((8, 8), 65535), 0, 16) and (d / "img0.txt").write_bytes(b""),
     "img0.txt: caption is empty"),
    (lambda d: (d / "img0.txt").write_bytes(b"\xff\xfe\x00"), "img0.txt: caption is not UTF-8")])
def test_glance_cli_one_line(tiny_flux, tmp_path, capsys, breaker, needle):
    cfg = write_configs(tmp_path, tiny_flux)
    breaker(tmp_path / "data")
    err = run_err(capsys, ["glance", "--config", str(cfg), "--dry-run"])
    assert needle in err
    assert not (tmp_path / "output").exists()
