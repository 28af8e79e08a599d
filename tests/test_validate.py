"""`glancetune validate-dataset`: the report, the exit status, the edit layout, and agreement with the loader."""
import pytest

from conftest import make_dataset, make_image
from glancetune.cli import main
from glancetune.data import build_plan, load_backends
from glancetune.errors import GlanceError
from test_backends import local, write_backend


def validate(capsys, *args):
    rc = main(["validate-dataset", *map(str, args)])
    return rc, capsys.readouterr().out


def table(out: str) -> dict[str, int]:
    rows = {}
    for line in out.splitlines():
        label, _, n = line.rpartition(" ")
        if n.isdigit() and label.strip():
            rows[label.strip()] = int(n)
    return rows


def test_clean_folder_exits_0(tmp_path, capsys):
    make_dataset(tmp_path / "d", n=2)
    rc, out = validate(capsys, "--path", tmp_path / "d", "--resolution", 128)
    assert rc == 0 and "result: clean" in out and "problems" not in out
    rows = table(out)
    assert rows["images"] == 2 and rows["captions read"] == 2 and rows["image smaller than 128^2"] == 0


def test_every_problem_is_reported(tmp_path, capsys):
    d = make_dataset(tmp_path / "d", n=7)
    (d / "img0.txt").unlink()  # missing partner
    (d / "lonely.txt").write_text("no image")  # caption without image
    (d / "img1.txt").write_bytes(b"\xef\xbb\xbf \n ")  # empty (BOM + spaces)
    (d / "img2.txt").write_bytes(b"caf\xe9")  # not UTF-8
    (d / "img3.png").write_bytes(b"not an image")  # unreadable
    (d / "img4.png").write_bytes((d / "img4.png").read_bytes()[:150])  # truncated
    make_image(d / "img5.jpg", (32, 32))  # duplicate basename with another extension
    make_image(d / "img6.png", (64, 64))  # smaller than --resolution
    rc, out = validate(capsys, "--path", d, "--resolution", 100)
    assert rc == 1 and "result: 9 problem(s) found" in out
    for needle in ("img0.png: no caption file img0.txt", "lonely.txt: caption without an image",
                   "img1.txt: caption is empty", "img2.txt: caption is not UTF-8",
                   "img3.png: unreadable or corrupt image", "img4.png: unreadable or corrupt image",
                   "img5.png: duplicate basename (also img5.jpg)", "img6.png: 64x64 is smaller than resolution 100"):
        assert needle in out, needle
    rows = table(out)
    assert rows == {**rows, "image without caption": 1, "caption without image": 1, "empty caption": 1,
                    "caption not UTF-8": 1, "unreadable or corrupt image": 2, "duplicate basename": 1,
                    "image smaller than 100^2": 2, "images": 7}  # img6.png (64^2) and img5.jpg (32^2)
    assert "target without control image" not in out  # rows of the edit layout only show for it


def test_edit_layout(tmp_path, capsys):
    make_dataset(tmp_path / "e" / "image", n=3)
    control = tmp_path / "e" / "control"
    control.mkdir()
    make_image(control / "img0.jpg", (128, 128))
    make_image(control / "img1.png", (128, 128))
    make_image(control / "extra.png", (128, 128))
    rc, out = validate(capsys, "--path", tmp_path / "e")
    assert rc == 1 and "layout: edit (image/ + control/)" in out
    assert "image/img2.png: no control image control/img2.* (.png/.jpg/.jpeg/.webp)" in out  # the loader's text
    assert "control/extra.png: control image without a target" in out
    rows = table(out)
    assert rows["target images (image/)"] == 3 and rows["control images (control/)"] == 3
    assert rows["target without control image"] == 1 and rows["control image without target"] == 1
    (control / "extra.png").rename(control / "img2.webp")
    assert validate(capsys, "--path", tmp_path / "e")[0] == 0


def test_missing_folder_and_bad_arguments(tmp_path, capsys):
    rc, out = validate(capsys, "--path", tmp_path / "nope")
    assert rc == 1 and "nope: dataset folder does not exist" in out and table(out)["folder missing"] == 1
    assert main(["validate-dataset", "--path", str(tmp_path), "--resolution", "0"]) == 2
    assert "--resolution: must be a positive" in capsys.readouterr().err
    assert main(["validate-dataset"]) == 2
    assert "give --path DIR or --data-backend-config FILE" in capsys.readouterr().err


def test_caption_extension(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    make_image(d / "a.png")
    (d / "a.caption").write_text("a caption")
    assert validate(capsys, "--path", d)[0] == 1
    assert validate(capsys, "--path", d, "--caption-extension", ".caption")[0] == 0


def test_dataloader_json_mode_lists_every_problem(tmp_path, capsys):
    edits = make_dataset(tmp_path / "edits", n=3)
    (edits / "img2.txt").write_text("")
    refs = tmp_path / "refs"
    refs.mkdir()
    make_image(refs / "img0.png", (128, 128))
    make_image(refs / "stray.png", (128, 128))
    cfg = write_backend(tmp_path, [local(edits, conditioning_data="refs"),
                                   {"id": "refs", "type": "local", "dataset_type": "conditioning",
                                    "instance_data_dir": str(refs), "conditioning_type": "reference_strict"}])
    rc, out = validate(capsys, "--data-backend-config", cfg)
    assert rc == 1 and "result: 4 problem(s) found" in out
    assert "img2.txt: caption is empty" in out and "img1.png: no matching conditioning (refs) image" in out
    assert "img2.png: no matching conditioning (refs) image" in out  # a target with a problem still needs its ref
    assert "stray.png: conditioning (refs) image without a target" in out
    assert table(out)["training images"] == 1
    cfg.write_text("[{")
    assert main(["validate-dataset", "--data-backend-config", str(cfg)]) == 2  # the file itself: an error


BROKEN = {  # folder breakers: the loader's error must be the validator's first problem
    "no caption": lambda d: (d / "img1.txt").unlink(),
    "lone caption": lambda d: (d / "zz.txt").write_text("x"),
    "empty": lambda d: (d / "img0.txt").write_text(" \n"),
    "latin-1": lambda d: (d / "img1.txt").write_bytes(b"\xff"),
    "corrupt": lambda d: (d / "img0.png").write_bytes(b"\x89PNG\r\n\x1a\n"),
    "duplicate": lambda d: make_image(d / "img1.webp"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_loader_and_validator_agree(tmp_path, capsys, name):
    d = make_dataset(tmp_path / "d", n=2)
    BROKEN[name](d)
    with pytest.raises(GlanceError) as e:
        build_plan(load_backends(write_backend(tmp_path, [{"backend": "simple", "image_dir": str(d)}])), 16)
    rc, out = validate(capsys, "--path", d)
    first = out.split("problems (", 1)[1].splitlines()[1].strip()
    assert rc == 1 and first == str(e.value).replace("image_dir", "dataset folder")
