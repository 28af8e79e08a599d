"""Shared fixtures: one tiny FLUX.1 folder and one small Glance run per test session (imports are the slow part)."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny models: one thread is as fast on a quiet machine and does not collapse when the cores are shared
os.environ.setdefault("OMP_NUM_THREADS", "1")
# MKL otherwise picks gemm kernels by memory alignment, so two processes can differ in the last bits: the
# comparisons across processes (resume, parallel phases) need its alignment-independent mode (no slower)
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
warnings.filterwarnings("ignore", message=".*peft_config.*multiple adapters.*")

from PIL import Image  # noqa: E402

from glancetune.cli import main  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory):
    os.environ["GLANCETUNE_HOME"] = str(tmp_path_factory.mktemp("home"))


@pytest.fixture(autouse=True)
def _compile_marks(tmp_path_factory, monkeypatch):
    """Each test its own marks of compiled graphs (train/speed.py): a compiled job of one test does not make
    another test's `compile_transformer: auto` count inductor's cache as warm."""
    from glancetune.engine import speed

    d = tmp_path_factory.mktemp("compile-marks")
    monkeypatch.setattr(speed, "marks_dir", lambda: d)


def make_image(path: Path, size=(128, 128), seed=0, mode="RGB"):
    import numpy as np

    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 4 if mode == "RGBA" else 3)) * 255).astype("uint8")
    # a smooth gradient plus a little noise: something a tiny model can fit
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    arr[..., 0] = (xx * 255 // max(1, size[0] - 1)).astype("uint8")
    Image.fromarray(arr, mode).save(path)
    return path


def make_dataset(root: Path, n=1, size=(128, 128), caption="a red gradient with speckles") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_image(root / f"img{i}.png", size, seed=i)
        (root / f"img{i}.txt").write_text(caption if n == 1 else f"{caption} {i}", encoding="utf-8")
    return root


def write_configs(root: Path, model: str, resolution=128, steps=6, **extra) -> Path:
    """A glance config + dataloader JSON under root; returns the config path."""
    data = make_dataset(root / "data") if not (root / "data").exists() else root / "data"
    (root / "config").mkdir(parents=True, exist_ok=True)
    backend = root / "config" / "multidatabackend.json"
    backend.write_text(json.dumps([{"backend": "simple", "resolution": resolution, "shuffle": True,
                                    "image_dir": str(data), "caption_extension": ".txt"}]))
    cfg = {"--model_type": "lora", "--model_family": "flux", "--pretrained_model_name_or_path": model,
           "--data_backend_config": str(backend), "--train_batch_size": 1, "--max_train_steps": steps,
           "--lora_rank": 4, "--output_dir": str(root / "output"),
           # the paper's mode (flow loss, fixed Glance cut): the mechanics under test are the same for every
           # objective and ladder, and the default's search + teacher would cost each run ~10-30 s more;
           # tests/test_defaults.py runs the defaults themselves
           "glance_objective": "flow", "glance_ladder": "glance"}
    for key, value in extra.items():  # `output_dir=` replaces `--output_dir` (a key given twice is an error)
        cfg.pop("--" + key.lstrip("-"), None)
        cfg.pop(key.lstrip("-"), None)
        cfg[key] = value
    path = root / "config" / "glance.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("models") / "tiny-flux"
    assert main(["tiny", "flux", str(d)]) == 0
    return str(d)


@pytest.fixture(scope="session")
def glance_run(tiny_flux, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    cfg = write_configs(root, tiny_flux, steps=8)
    assert main(["glance", "--config", str(cfg)]) == 0
    return root / "output"


class ForwardCalls(list):
    """What a spied `forward` recorded, one entry per call; `restore()` puts the original `forward` back early."""


def spy_on(monkeypatch, target, record=lambda *args, **kwargs: (args, kwargs)) -> ForwardCalls:
    """Patch `target.forward` (a class: every instance; or one module) to append `record(*args, **kwargs)` (the
    call's arguments, without `self`) and then call the original. `monkeypatch` (a fixture's, or a
    `pytest.MonkeyPatch.context()` for a wider-scoped fixture) puts the original back at its teardown."""
    calls = ForwardCalls()
    orig = target.forward
    if isinstance(target, type):
        def forward(self, *args, **kwargs):
            calls.append(record(*args, **kwargs))
            return orig(self, *args, **kwargs)
    else:
        def forward(*args, **kwargs):
            calls.append(record(*args, **kwargs))
            return orig(*args, **kwargs)
    monkeypatch.setattr(target, "forward", forward)
    calls.restore = lambda: monkeypatch.setattr(target, "forward", orig)
    return calls


@pytest.fixture
def spy_forward(monkeypatch):
    """`spy_forward(cls_or_module, record)`: see `spy_on`; restored when the test ends."""
    def spy(target, record=lambda *args, **kwargs: (args, kwargs)) -> ForwardCalls:
        return spy_on(monkeypatch, target, record)

    return spy


PROMPT = "a red gradient with speckles"


def run_err(capsys, argv):
    """A bad-input check: exit status 2 and exactly one line on stderr, starting with "error: "."""
    capsys.readouterr()  # what earlier calls wrote is not this call's
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if any pipeline weights are loaded."""
    from glancetune.families.base import Family

    def refuse(*a, **k):
        raise AssertionError("weights were loaded before the bad argument was reported")

    monkeypatch.setattr(Family, "load_pipeline", refuse)


def gen(run, out, *extra):
    return ["generate", "--run", str(run), "--prompt", PROMPT, "--output", str(out), "--width", "64", "--height",
            "64", *extra]


def glance(cfg, *extra):
    return ["glance", "--config", str(cfg), *extra]


def no_output(root: Path):
    assert not (root / "output").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".output")]


def run_ladder(run: Path):
    from glancetune.export.files import read_record

    return read_record(run / "slow")[0].ladder


def stock_chain(pipe, run: Path) -> dict:
    """Stock diffusers only: both adapters on `pipe`, an identity scheduler, the ladder as `sigmas=`, and the adapter
    switched in `callback_on_step_end` after the last slow step; returns those keywords of the pipeline call."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe.load_lora_weights(str(run / "slow"), adapter_name="slow")
    pipe.load_lora_weights(str(run / "fast"), adapter_name="fast")
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, use_dynamic_shifting=False,
                                                                 shift=1.0, shift_terminal=None)
    lad = run_ladder(run)
    pipe.set_adapters("slow")

    def cb(p, i, t, kw):
        if i == len(lad.slow) - 1:
            p.set_adapters("fast")
        return {}

    return dict(sigmas=list(lad.sigmas), num_inference_steps=len(lad.sigmas), callback_on_step_end=cb)


def stock_glance(family: str, model, run: Path, seed: int, width: int, height: int, **guidance):
    """The folder's pipeline class through `stock_chain`."""
    import torch

    from glancetune.families import model_info

    adapter = model_info(str(model), family).family  # the adapter for the folder's pipeline class
    pipe = adapter.pipeline_class().from_pretrained(str(model))
    return pipe(prompt=PROMPT, width=width, height=height, generator=torch.Generator().manual_seed(seed),
                output_type="np", **stock_chain(pipe, run), **guidance).images[0]


@pytest.fixture
def on_cuda(monkeypatch):
    """The plan as it would be resolved on a CUDA machine (only the device's type is read)."""
    import torch

    from glancetune.engine import runtime, speed

    monkeypatch.setattr(runtime, "select", lambda device, mp="auto": (torch.device("cuda"), "bf16"))
    monkeypatch.setattr(speed, "triton_available", lambda: True)
    monkeypatch.setattr(speed, "device_name", lambda d: "NVIDIA H200" if d.type == "cuda" else d.type)
