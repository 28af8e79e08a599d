"""examples/: every shipped config plans (`--dry-run`) as written, with only the model swapped for the tiny model
of its family and the data folder for a small one, planned as on a CUDA machine (their quantized bases are
CUDA-only). (Whether each
fits its card is not checked here: the memory plan is not built yet; docs/memory.md holds the measurements.)"""
import json
import shutil
from pathlib import Path

import pytest

from conftest import make_dataset, make_image
from glancetune.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = sorted(p for p in EXAMPLES.rglob("*.json") if "multidatabackend" not in p.name)
TINY = {("flux", None): "flux", ("qwen_image", None): "qwen_image", ("flux2", "klein-9b"): "flux2-klein",
        ("flux2", "dev"): "flux2-dev", ("qwen_image_edit", None): "qwen_image_edit"}


def test_every_example_is_listed():
    listed = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    assert CONFIGS and all(p.name in listed for p in CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_plans_on_the_tiny_model(path, tmp_path, monkeypatch, capsys, on_cuda):
    cfg = json.loads(path.read_text(encoding="utf-8"))
    get = lambda k: cfg.get(k, cfg.get("--" + k))  # noqa: E731
    tiny = TINY[(get("model_family"), get("model_flavour"))]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    if tiny.startswith("qwen_image_edit"):
        for sub in ("image", "control"):
            (tmp_path / "data-edit" / sub).mkdir(parents=True)
        make_image(tmp_path / "data-edit" / "image" / "glance.png", (64, 64))
        (tmp_path / "data-edit" / "image" / "glance.txt").write_text("make it red")
        make_image(tmp_path / "data-edit" / "control" / "glance.png", (64, 64), seed=1)
    else:
        make_dataset(tmp_path / "data", size=(64, 64))
    key = "--pretrained_model_name_or_path" if "--pretrained_model_name_or_path" in cfg else \
        "pretrained_model_name_or_path"
    cfg[key] = f"tiny:{tiny}"
    (tmp_path / "examples" / path.relative_to(EXAMPLES)).write_text(json.dumps(cfg))
    command = "train" if "seed-recipe" in str(path) else "glance"
    rel = str(Path("examples") / path.relative_to(EXAMPLES))
    assert main([command, "--config", rel, "--dry-run"]) == 0, capsys.readouterr().err  # planned for a CUDA card
