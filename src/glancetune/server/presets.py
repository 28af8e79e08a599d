"""Presets of the New run form: a tiny CPU smoke test, and the shipped per-card configs of examples/ (FLUX.1-dev and
Qwen-Image on a 24 GB card, ...), read from those files when the server starts from a source checkout, so the form
and the examples never disagree. A preset fills the form; every value stays editable.

The keys the server sets for each run (data_backend_config, output_dir, ...) are dropped from a preset; the
dataloader's resolution of examples/multidatabackend.json becomes the form's resolution field.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .forms import SERVER_KEYS, form_keys

log = logging.getLogger(__name__)
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"  # a source checkout's examples/ (absent in a wheel)
# (file, label) of the examples offered, in this order
SHIPPED = (("flux1-dev-24gb.json", "FLUX.1-dev, 24 GB card"), ("qwen-image-24gb.json", "Qwen-Image, 24 GB card"),
           ("flux1-dev-16gb.json", "FLUX.1-dev, 16 GB card"), ("flux2-klein-9b-24gb.json", "FLUX.2 klein 9B, 24 GB"),
           ("qwen-image-48gb.json", "Qwen-Image, 48 GB+ card"))
# the smoke test: a random tiny FLUX on the CPU, 20 steps, validation every 10 (about a minute on 2 cores)
SMOKE = {"pretrained_model_name_or_path": "tiny:flux", "model_family": "flux", "max_train_steps": 20,
         "lora_rank": 4, "validation_prompt": "a red fox", "validation_steps": 10, "device": "cpu"}


@dataclass
class Preset:
    name: str  # the button's id part
    label: str
    settings: dict[str, str] = field(default_factory=dict)  # form key -> the text the form shows
    resolution: int | None = None
    source: str = ""  # where the values come from


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def _resolution(config: dict, folder: Path) -> int | None:
    """The first dataset's resolution of the example's dataloader JSON (named relative to the repo root)."""
    ref = config.get("data_backend_config")
    if not isinstance(ref, str):
        return None
    try:
        backends = json.loads((folder.parent / ref).read_text(encoding="utf-8"))
        return int(backends[0]["resolution"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def from_example(path: Path, label: str) -> Preset | None:
    """A preset of one examples/ config (None when it is missing or unreadable: logged, the form goes on)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("preset %s skipped: %s", path.name, e)
        return None
    keys = set(form_keys())
    settings = {k: _text(v) for k, v in config.items() if k in keys and k not in SERVER_KEYS}
    return Preset(path.stem, label, settings, _resolution(config, path.parent), f"examples/{path.name}")


def presets(folder: Path = EXAMPLES) -> list[Preset]:
    """The smoke test, then each shipped example found."""
    out = [Preset("tiny-cpu", "Tiny CPU smoke test", {k: _text(v) for k, v in SMOKE.items()}, 64,
                  "the built-in tiny:flux (random weights)")]
    for name, label in SHIPPED:
        if (folder / name).is_file():
            p = from_example(folder / name, label)
            if p is not None:
                out.append(p)
    return out


def presets_json(folder: Path = EXAMPLES) -> str:
    return json.dumps([asdict(p) for p in presets(folder)])
