"""Finding image/caption pairs (data/discovery.py) and each problem as one line naming the file: missing, empty
or non-UTF-8 captions, corrupt and zero-byte images, folders that cannot be listed, broken and looping symlinks,
data folders that are files; the edit layout (image/ + control/) discovered alike by the loader and
`validate-dataset`; and the same lines from `glancetune glance` (exit 2, nothing written)."""
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset, make_image, no_output, run_err, write_configs
from glancetune.data import load_backends, load_plan
from glancetune.data.edit import load_job_plan
from glancetune.errors import GlanceError
from helpers import backend, loader_error, local, make_dir, problems_of, simple, validate, write_png


# --- the edit layout: the loader and the validator agree --------------------------------------------------------------
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


# --- folders, links and unreadable files ------------------------------------------------------------------------------
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


# --- through `glancetune glance`: one line, exit 2, nothing written ---------------------------------------------------
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


def test_missing_caption(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    (tmp_path / "data" / "img0.txt").unlink()
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "img0.png" in err and "no caption file img0.txt" in err
    no_output(tmp_path)


def test_caption_without_image(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    (tmp_path / "data" / "lonely.txt").write_text("x")
    assert "lonely.txt: caption without an image" in run_err(capsys, ["glance", "--config", str(cfg)])
    no_output(tmp_path)


@pytest.mark.parametrize("content", [b"", b"  \n\t\n", b"\xef\xbb\xbf  "])
def test_empty_caption(tiny_flux, tmp_path, capsys, content):
    cfg = write_configs(tmp_path, tiny_flux)
    (tmp_path / "data" / "img0.txt").write_bytes(content)
    assert "img0.txt: caption is empty" in run_err(capsys, ["glance", "--config", str(cfg)])
    no_output(tmp_path)


def test_non_utf8_caption(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    (tmp_path / "data" / "img0.txt").write_bytes(b"caf\xe9")
    assert "img0.txt: caption is not UTF-8" in run_err(capsys, ["glance", "--config", str(cfg)])


@pytest.mark.parametrize("payload", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_corrupt_image(tiny_flux, tmp_path, capsys, payload):
    cfg = write_configs(tmp_path, tiny_flux)
    (tmp_path / "data" / "img0.png").write_bytes(payload)
    assert "img0.png: unreadable or corrupt image" in run_err(capsys, ["glance", "--config", str(cfg)])
    no_output(tmp_path)


def test_truncated_image(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    p = tmp_path / "data" / "img0.png"
    p.write_bytes(p.read_bytes()[:200])
    assert "img0.png: unreadable or corrupt image" in run_err(capsys, ["glance", "--config", str(cfg)])


def test_image_dir_without_pairs(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    for f in (tmp_path / "data").iterdir():
        f.unlink()
    assert "no image/caption pairs" in run_err(capsys, ["glance", "--config", str(cfg)])
    no_output(tmp_path)


def test_missing_image_dir(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    backend = tmp_path / "config" / "multidatabackend.json"
    backend.write_text(json.dumps([{"backend": "simple", "image_dir": str(tmp_path / "nope")}]))
    assert "nope: image_dir does not exist" in run_err(capsys, ["glance", "--config", str(cfg)])
