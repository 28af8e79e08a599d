"""Named prompt sets: validation prompts from the config (validation_prompt, validation_prompts,
user_prompt_library) and prompt files for `glancetune eval` (the default set ships in assets/eval_prompts.json).

A prompt file (read by `read_prompt_file`, the one reader of all of them) is SimpleTuner's user_prompt_library
layout, a JSON object of name -> prompt; or a JSON list of prompts; or plain text, one prompt per line (blank lines
and lines starting with `#` skipped). Listed prompts are named prompt-0, prompt-1, ... A `.json` file is read as
JSON, a `.txt` file as text, any other by its first character (`{` or `[`: JSON). Names become file names, so they are reduced to letters, digits,
`.`, `_` and `-`. `<subject>`-style placeholders are kept as written: glancetune has no instance_prompt key to
fill them from (a notice names each prompt that holds one).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import GlanceError

log = logging.getLogger(__name__)
DEFAULT_EVAL_PROMPTS = Path(__file__).parent.parent / "assets" / "eval_prompts.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PLACEHOLDER = re.compile(r"<[A-Za-z_][A-Za-z0-9_ -]*>")


@dataclass(frozen=True)
class NamedPrompt:
    name: str  # safe as a file name
    text: str


def safe_name(name: str) -> str:
    """A prompt name as a file name: runs of other characters become `_` (never empty, never hidden)."""
    out = _UNSAFE.sub("_", str(name)).strip("._") or "prompt"
    return out[:80]


def _entries(data, where: str) -> list[tuple[str, str]]:
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = [(f"prompt-{i}", p) for i, p in enumerate(data)]
    else:
        raise GlanceError(f"{where}: expected a JSON object of name -> prompt (or a list of prompts)")
    for name, text in items:
        if isinstance(text, dict) and isinstance(text.get("prompt"), str):  # {"prompt": ...} entries
            text = text["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise GlanceError(f"{where}: prompt {name!r} is empty or not text")
    return [(str(n), t["prompt"] if isinstance(t, dict) else t) for n, t in items]


def read_prompt_file(path: str | Path, key: str) -> list[tuple[str, str]]:
    """(name, prompt) pairs of a prompt file (JSON object, JSON list or text lines); errors name `key` and the
    file."""
    p = Path(path)
    if p.is_dir():
        raise GlanceError(f"{key}: {p} is a folder, not a prompt file")
    try:
        raw = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise GlanceError(f"{key}: {p}: file not found") from None
    except UnicodeDecodeError:
        raise GlanceError(f"{key}: {p}: not UTF-8 text (a prompt file is JSON or text, one prompt a line)") from None
    except OSError as e:
        raise GlanceError(f"{key}: {p}: cannot read ({e.strerror or e})") from None
    if "\x00" in raw:
        raise GlanceError(f"{key}: {p}: not a text file (a prompt file is JSON or text, one prompt a line)")
    suffix = p.suffix.lower()
    if suffix == ".json" or (suffix != ".txt" and raw.lstrip()[:1] in ("{", "[")):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise GlanceError(f"{key}: {p}: JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}") from None
        entries = _entries(data, f"{key}: {p}")
    else:
        lines = [ln.strip() for ln in raw.splitlines()]
        entries = [(f"prompt-{i}", t) for i, t in enumerate(ln for ln in lines if ln and not ln.startswith("#"))]
    if not entries:
        raise GlanceError(f"{key}: {p}: holds no prompts")
    return entries


def named_prompts(pairs: list[tuple[str, str, str]]) -> list[NamedPrompt]:
    """(key, name, prompt) -> NamedPrompts with unique safe names; a clash names both keys."""
    out: list[NamedPrompt] = []
    seen: dict[str, str] = {}
    for key, name, text in pairs:
        safe = safe_name(name)
        if safe in seen:
            raise GlanceError(f"{key}: prompt name {name!r} is the same file name ({safe}) as one from "
                              f"{seen[safe]}; rename one")
        seen[safe] = key
        if _PLACEHOLDER.search(text):
            log.info("notice: %s: prompt %r holds a placeholder (%s); it is used as written", key, name,
                     _PLACEHOLDER.search(text).group(0))
        out.append(NamedPrompt(safe, text))
    return out


def validation_prompts(cfg) -> list[NamedPrompt]:
    """The config's validation prompts: validation_prompt (named "validation"), then validation_prompts (a file,
    mapping or list), then user_prompt_library (a file)."""
    pairs: list[tuple[str, str, str]] = []
    if cfg.validation_prompt:
        pairs.append(("validation_prompt", "validation", cfg.validation_prompt))
    vp = cfg.validation_prompts
    if isinstance(vp, str):
        pairs += [("validation_prompts", n, t) for n, t in read_prompt_file(vp, "validation_prompts")]
    elif vp:
        pairs += [("validation_prompts", n, t) for n, t in _entries(vp, "validation_prompts")]
    if cfg.user_prompt_library:
        pairs += [("user_prompt_library", n, t) for n, t in read_prompt_file(cfg.user_prompt_library,
                                                                           "user_prompt_library")]
    return named_prompts(pairs)


def eval_prompts(path: str | Path | None) -> list[NamedPrompt]:
    """`glancetune eval --prompts FILE`, or the default set shipped with the package."""
    key = "--prompts"
    return named_prompts([(key, n, t) for n, t in read_prompt_file(path or DEFAULT_EVAL_PROMPTS, key)])
