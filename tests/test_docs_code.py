"""Every fenced code block in the user docs (README.md, docs/*.md, examples/README.md) is checked for what it claims.

A block's language says what it is, and each kind is checked without downloads:
  bash    every `glancetune ...` command (also through `python -m glancetune` and `accelerate launch -m glancetune`)
          parses with the real command-line parser, and every `pip install '.[extra]'` names an extra pyproject has
  json    parses; a list (or an object with `backend`/`type`) is a dataloader config checked by the loader itself, any
          other object a main config checked by the config loader
  python  compiles, and every `glancetune` import in it names a module and attribute that exist
  text    a synopsis, a folder tree or output: not run
The two Python blocks that run end to end on the tiny model are executed in tests/test_docs.py.
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from glancetune.cli import build_parser
from glancetune.errors import GlanceError

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]
BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
KINDS = {"bash", "json", "python", "text"}
EXTRAS = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
             ["optional-dependencies"])


def blocks():
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append(pytest.param(m.group(1), m.group(2), id=f"{page.relative_to(ROOT).as_posix()}:{line}"))
    return out


BLOCKS = blocks()


def shell_commands(code: str) -> list[list[str]]:
    """The block's commands as argument lists: continuation lines joined, comments dropped, `&&` / `;` split."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        cmd: list[str] = []
        for w in words + ["&&"]:
            if w in ("&&", ";", "||", "&"):
                if cmd:
                    commands.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return commands


def glancetune_args(cmd: list[str]) -> list[str] | None:
    """The arguments after `glancetune` (or `-m glancetune`), or None for another program."""
    if cmd[0] == "glancetune":
        return cmd[1:]
    if "-m" in cmd and cmd.index("-m") + 1 < len(cmd) and cmd[cmd.index("-m") + 1] == "glancetune":
        return cmd[cmd.index("-m") + 2:]
    return None


def subcommand_options(name: str) -> set[str] | None:
    """The option strings of `glancetune NAME`, or None when there is no such command."""
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    sub = action.choices.get(name)
    return None if sub is None else set(sub._option_string_actions)


def check_synopsis(args: list[str]) -> list[str]:
    """A synopsis (`[--seed N]`, `A | B`, `...`): the command exists and every option it names is one of its own."""
    known = subcommand_options(args[0])
    if known is None:
        return [f"no command {args[0]!r}"]
    named = {re.sub(r"[\[\]]", "", w).split("=")[0] for w in args[1:] if w.lstrip("[").startswith("--")}
    return [f"glancetune {args[0]} has no option {o}" for o in sorted(named - known)]


def check_bash(code: str) -> list[str]:
    problems = []
    for cmd in shell_commands(code):
        args = glancetune_args(cmd)
        if args and any(w.startswith("[") or w in ("|", "...") for w in args):
            problems += check_synopsis(args)
        elif args is not None:
            try:
                parsed, extra = build_parser().parse_known_args(args)
            except SystemExit:
                problems.append(f"does not parse: glancetune {' '.join(args)}")
                continue
            if extra and not getattr(parsed, "config_overrides", False):
                problems.append(f"unknown arguments {extra}: glancetune {' '.join(args)}")
        if cmd[:2] == ["pip", "install"] or cmd[1:4] == ["-m", "pip", "install"]:
            for word in cmd:
                for extra in re.findall(r"\[([\w,-]+)\]", word):
                    problems += [f"no extra {e!r} in pyproject.toml: {word}" for e in extra.split(",")
                                 if e not in EXTRAS]
    return problems


def check_json(code: str, tmp_path: Path) -> list[str]:
    from glancetune.config.schema import load_config
    from glancetune.data.backends import load_backends

    try:
        data = json.loads(code)
    except json.JSONDecodeError as e:
        return [f"JSON syntax: {e}"]
    path = tmp_path / "block.json"
    path.write_text(code, encoding="utf-8")
    try:
        if isinstance(data, list) or "backend" in data or "type" in data:
            load_backends(path)
        else:
            load_config(path)
    except GlanceError as e:
        return [str(e)]
    return []


def check_python(code: str) -> list[str]:
    try:
        compile(code, "block", "exec")
    except SyntaxError as e:
        return [f"syntax: {e}"]
    problems = []
    for module, names in re.findall(r"^\s*from (glancetune[\w.]*) import ([\w, ()]+)", code, re.M):
        mod = importlib.import_module(module)
        problems += [f"{module} has no {n}" for n in re.findall(r"\w+", names) if not hasattr(mod, n)]
    return problems


@pytest.mark.parametrize("kind,code", BLOCKS)
def test_every_doc_block_does_what_it_claims(kind, code, tmp_path):
    assert kind in KINDS, f"a code block with language {kind!r}: name one of {sorted(KINDS)} (text: not run)"
    problems = {"bash": check_bash, "python": check_python, "text": lambda c: []}.get(kind, lambda c: None)(code) \
        if kind != "json" else check_json(code, tmp_path)
    assert not problems, "; ".join(problems)


def test_the_checks_catch_a_stale_block(tmp_path):
    """Negative controls: a renamed flag, an unknown command, a missing extra, a config key the schema lacks, a
    dataloader entry without its folder key, a Python import of a name that does not exist."""
    assert check_bash("glancetune generate --run out --prompt x --seeds 3") != []
    assert check_bash("glancetune sample --run out") != []
    assert check_bash("glancetune eval --run out [--seeds N] [--steps-basis 50]") != []  # a synopsis, one stale flag
    assert check_bash("glancetune eval --run out [--seeds N] [--steps-base 50]") == []
    assert check_bash("pip install -e '.[quantization]'") != []
    assert check_bash("glancetune glance --config glance.json --learning_rate=1e-4 && pip install -e '.[quant]'") == []
    assert check_json('{"lora_rnk": 4}', tmp_path) != []
    assert check_json('[{"backend": "simple", "resolution": "big"}]', tmp_path) != []
    assert check_python("from glancetune.sampling.sampler import GlanceSampler, NoSuchThing") != []
    assert check_python("from glancetune.sampling.sampler import GlanceSampler") == []
