"""The user documentation: README.md is a short front door, docs/*.md hold the rest.

Checks that can fail: the README's length, every relative link (and its #anchor) in README.md and docs/*.md, every
config key of the schema documented in docs/configuration.md (and no key there that the schema lacks), and no
internal tracker numbers ("issue 12", "session 15", "run 4") in the pages. And docs/export.md's stock-diffusers
snippet, run as written on a tiny run: the image `generate --lora-load stock` writes, and its ladder-only variant.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PROMPT
from glancetune.cli import main
from glancetune.export.files import read_record
from glancetune.sampling.sampler import GlanceSampler, resolve_spec

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to -."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text(encoding="utf-8")))


def test_the_pages_exist():
    assert README.is_file()
    names = {p.name for p in DOCS.glob("*.md")}
    for page in ("configuration.md", "benchmarks.md", "export.md", "memory.md", "method.md"):
        assert page in names


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (at most 200: move details to docs/)"


def test_readme_keeps_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . && "
            "glancetune quickstart") in text
    assert 'pip install -e ".[test]" && python -m pytest' in text
    assert (ROOT / ".ci" / "run").read_text(encoding="utf-8").rstrip().endswith("python -m pytest")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = page if not path_part else (page.parent / path_part).resolve()
        if not dest.exists():
            broken.append(f"{target} (no file {dest})")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.name}: broken links: " + "; ".join(broken)


def test_the_link_checker_catches_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n\n[ok](p.md#title) [bad](missing.md) `[code](not-a-link.md)`\n", encoding="utf-8")
    found = links(page)
    assert found == ["p.md#title", "missing.md"]
    assert "title" in anchors(page)
    assert not (tmp_path / "missing.md").exists()


def test_every_config_key_is_documented():
    from glancetune.config.schema import TrainConfig

    doc = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [k for k in TrainConfig.model_fields if f"`{k}`" not in doc]
    assert not missing, ("docs/configuration.md lacks these config keys (python tools/config_reference.py --write): "
                         + ", ".join(missing))


def test_the_reference_names_no_key_the_schema_lacks():
    from glancetune.config.schema import TrainConfig

    doc = (DOCS / "configuration.md").read_text(encoding="utf-8")
    begin, end = "<!-- BEGIN generated", "<!-- END generated -->"
    assert begin in doc and end in doc
    table = doc.split(begin, 1)[1].split(end, 1)[0]
    keys = re.findall(r"^\| `([a-z0-9_]+)` \|", table, re.M)
    assert len(keys) >= len(TrainConfig.model_fields)
    stale = sorted(set(keys) - set(TrainConfig.model_fields))
    assert not stale, f"docs/configuration.md documents keys the schema does not have: {stale}"


INTERNAL = re.compile(r"\b(issue|session)s? [0-9]+|\b(run|call)s? [0-9]+\b(?! (processes|steps|images|GPUs))", re.I)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_internal_tracker_numbers(page):
    hits = [f"{page.name}:{i}: {line.strip()}" for i, line in
            enumerate(page.read_text(encoding="utf-8").splitlines(), 1) if INTERNAL.search(line)]
    assert not hits, "internal issue/session/run numbers (say what was measured instead): " + " | ".join(hits)


def test_the_tracker_check_catches_them():
    for text in ("as issue 12 asked", "Session 15 measured", "run 4 figures", "(sessions 13, 15)"):
        assert INTERNAL.search(text), text
    assert not INTERNAL.search("a run killed at step 5 and resumed from checkpoint-3")


# --- docs/export.md's stock-diffusers snippet, run --------------------------------------------------------------------
def readme_snippet() -> str:
    """docs/export.md's "Reproducing our images with stock diffusers" code block, as written there."""
    readme = (Path(__file__).parents[1] / "docs" / "export.md").read_text(encoding="utf-8")
    section = readme.split("## Reproducing our images with stock diffusers", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


README_SNIPPET = readme_snippet()


def test_readme_snippet_equals_generate(glance_run, tiny_flux, tmp_path, monkeypatch):
    code = README_SNIPPET
    for old, new in (('"black-forest-labs/FLUX.1-dev"', repr(tiny_flux)), ('"output/glance"', repr(str(glance_run))),
                     ('"a fox in the snow"', repr(PROMPT)), ("seed = 0", "seed = 5")):
        assert code.count(old) == 1
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README snippet", "exec"), {})
    assert main(["generate", "--run", str(glance_run), "--prompt", PROMPT, "--seed", "5", "--output", "ours.png"]) == 0
    assert main(["generate", "--run", str(glance_run), "--prompt", PROMPT, "--seed", "5", "--output", "stock.png",
                 "--lora-load", "stock"]) == 0
    theirs = np.asarray(Image.open("fox-stock.png"), dtype=np.int16)
    ours, stock = (np.asarray(Image.open(f), dtype=np.int16) for f in ("ours.png", "stock.png"))
    assert theirs.shape[1::-1] == tuple(read_record(glance_run / "slow")[0].resolution)
    assert np.array_equal(theirs, stock)  # exactly what `generate --lora-load stock` writes
    assert np.abs(theirs - ours).max() <= 1  # our loader: float reordering only (as test_glance)


def test_generate_md_python_block_runs(glance_run, tmp_path, monkeypatch):
    """docs/generate.md's Python block, as written there (only the run folder replaced)."""
    page = (Path(__file__).parents[1] / "docs" / "generate.md").read_text(encoding="utf-8")
    code = page.split("### Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert code.count('"output/glance"') == 1
    code = code.replace('"output/glance"', repr(str(glance_run)))
    scope = {}
    exec(compile(code, "generate.md Python block", "exec"), scope)
    assert len(scope["images"]) == 1 and scope["images"][0].size == tuple(read_record(glance_run / "slow")[0].resolution)


def test_readme_ladder_only_recipe_equals_eval_ladder_column(glance_run, tiny_flux, tmp_path, monkeypatch):
    """docs/export.md's "ladder without LoRAs" instruction (the stock block without load_lora_weights, set_adapters
    and the callback) samples what `glancetune eval` calls base-L-ladder (the Glance sampler with the adapters off)."""
    from glancetune.sampling.compare import base_on_ladder

    lines = [ln for ln in README_SNIPPET.splitlines()
             if "load_lora_weights" not in ln and "set_adapters" not in ln and "def switch" not in ln
             and ln.strip() != "return {}"]
    code = "\n".join(lines).replace(",\n             callback_on_step_end=switch)", ")")
    assert "switch" not in code and "adapter" not in code
    for old, new in (('"black-forest-labs/FLUX.1-dev"', repr(tiny_flux)), ('"output/glance"', repr(str(glance_run))),
                     ('"a fox in the snow"', repr(PROMPT)), ("seed = 0", "seed = 5")):
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README ladder-only", "exec"), {})
    sampler = GlanceSampler.from_spec(resolve_spec(run=glance_run), device="cpu")
    w, h = sampler.size
    ladder = np.asarray(base_on_ladder(sampler, [PROMPT], 5, w, h)[0], dtype=np.int16)
    glance = np.asarray(sampler([PROMPT], seed=5)[0], dtype=np.int16)
    theirs = np.asarray(Image.open("fox-stock.png"), dtype=np.int16)
    assert np.abs(theirs - ladder).max() <= 1  # 0 seen; float reordering at most
    assert np.abs(theirs - glance).max() > 1  # and it is not the Glance image
