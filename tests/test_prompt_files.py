"""Prompt files, read by one function for every key that takes one (validation_prompts, user_prompt_library,
`eval --prompts`, `search-ladder --prompts`): SimpleTuner's JSON object of name -> prompt, a JSON list, and plain
text (one prompt a line, blank lines and `#` comments skipped); a bad file is one line naming the key and the file."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import run_err, write_configs

from glancetune.cli import main
from glancetune.errors import GlanceError
from glancetune.sampling.prompts import eval_prompts, read_prompt_file, validation_prompts

TEXT = "# my prompts\n\na fox in the snow\n   \n  # an indented comment\nissue #12 of a magazine, on a table  \n"


@pytest.mark.parametrize("name, content, expected", [
    ("p.json", json.dumps({"fox": "a fox in the snow", "cat": "a cat"}), [("fox", "a fox in the snow"), ("cat", "a cat")]),
    ("p.json", json.dumps(["a fox in the snow", "a cat"]), [("prompt-0", "a fox in the snow"), ("prompt-1", "a cat")]),
    ("p.txt", TEXT, [("prompt-0", "a fox in the snow"), ("prompt-1", "issue #12 of a magazine, on a table")]),
    ("p.txt", "[style] a fox\n{x} a cat\n", [("prompt-0", "[style] a fox"), ("prompt-1", "{x} a cat")]),
    ("prompts", "a fox in the snow\r\na cat\r\n", [("prompt-0", "a fox in the snow"), ("prompt-1", "a cat")]),
    ("prompts", '\n ["a fox"]', [("prompt-0", "a fox")]),  # no extension: JSON by its first character
    ("p.lst", "\ufeffa fox\n", [("prompt-0", "a fox")]),  # a byte-order mark is not part of the first prompt
])
def test_the_three_forms(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert read_prompt_file(path, "--prompts") == expected


@pytest.mark.parametrize("name, content, needle", [
    ("p.txt", "# only a comment\n\n   \n", "holds no prompts"),
    ("p.txt", "", "holds no prompts"),
    ("p.json", "[]", "holds no prompts"),
    ("p.json", '["a fox", 3]', "prompt 'prompt-1' is empty or not text"),
    ("p.json", '["a fox", "  "]', "prompt 'prompt-1' is empty or not text"),
    ("p.json", '"a fox"', "expected a JSON object of name -> prompt (or a list of prompts)"),
    ("p.json", "a fox in the snow\n", "JSON syntax error at line 1, column 1"),
    ("prompts", '{"fox": "a fox",}', "JSON syntax error at line 1"),
])
def test_bad_files_are_one_line(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(GlanceError) as e:
        read_prompt_file(path, "validation_prompts")
    msg = str(e.value)
    assert msg.startswith(f"validation_prompts: {path}") and needle in msg and "\n" not in msg


def test_unreadable_files(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "nul.txt").write_text("a fox\x00\n", encoding="utf-8")
    for name, needle in (("bin.txt", "not UTF-8 text"), ("latin1.txt", "not UTF-8 text"),
                         ("nul.txt", "not a text file"), ("missing.txt", "file not found")):
        with pytest.raises(GlanceError, match=f"^--prompts: {tmp_path / name}: {needle}"):
            read_prompt_file(tmp_path / name, "--prompts")
    with pytest.raises(GlanceError, match=f"^--prompts: {tmp_path} is a folder, not a prompt file$"):
        read_prompt_file(tmp_path, "--prompts")


def test_every_reader_takes_text(tmp_path):
    (tmp_path / "v.txt").write_text("a fox\n# skipped\na cat\n")
    (tmp_path / "lib.txt").write_text("a dog\n")
    cfg = SimpleNamespace(validation_prompt=None, validation_prompts=str(tmp_path / "v.txt"),
                          user_prompt_library=str(tmp_path / "lib.txt"))
    with pytest.raises(GlanceError, match="same file name"):  # both lists are named prompt-0, ...: a clash is named
        validation_prompts(cfg)
    cfg.user_prompt_library = None
    assert [(p.name, p.text) for p in validation_prompts(cfg)] == [("prompt-0", "a fox"), ("prompt-1", "a cat")]
    assert [p.text for p in eval_prompts(tmp_path / "v.txt")] == ["a fox", "a cat"]


def test_config_and_eval_commands(tmp_path, tiny_flux, glance_run, capsys, no_load):
    (tmp_path / "v.txt").write_text("a fox in the snow\n")
    cfg = write_configs(tmp_path, tiny_flux, validation_prompts=str(tmp_path / "v.txt"))
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    cfg = write_configs(tmp_path / "b", tiny_flux, validation_prompts=str(tmp_path / "empty.txt"))
    err = run_err(capsys, ["glance", "--config", str(cfg), "--dry-run"])
    assert f"validation_prompts: {tmp_path / 'empty.txt'}: holds no prompts" in err
    err = run_err(capsys, ["eval", "--run", str(glance_run), "--prompts", str(tmp_path / "empty.txt"), "--output",
                           str(tmp_path / "report")])
    assert err == f"error: --prompts: {tmp_path / 'empty.txt'}: holds no prompts"
