"""Where weights live (train/memory.py) on the tiny model, CPU: text-encoder precision enters the cache key and
quantizes the encoder; diffusers' group offloading of the transformer and of the encoders gives the same LoRA and
the same cache entries as a run without it (on the CPU the onload device is the CPU: the hooks run, the numbers
cannot change); offload_during_startup releases the text encoders before the VAE; VAE tiling enters the latent
key; the forms that cannot train are one line; --dry-run prints the memory plan."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_err, write_configs
from glancetune.cli import main


def lora_bytes(out: Path) -> dict:
    return {role: (out / role / "pytorch_lora_weights.safetensors").read_bytes() for role in ("slow", "fast")}


def cache_files(root: Path, kind: str) -> set[Path]:
    return set((root / kind).rglob("*.safetensors"))


def descriptions(root: Path, kind: str) -> list[dict]:
    """What each cache entry was computed from (its safetensors header)."""
    from safetensors import safe_open

    out = []
    for f in sorted(cache_files(root, kind)):
        with safe_open(str(f), "pt") as fh:
            out.append(json.loads(fh.metadata()["glancetune.inputs"]))
    return out


def run(tmp_path, tiny_flux, name, **keys) -> Path:
    cfg = write_configs(tmp_path / name, tiny_flux, steps=3, cache_dir=str(tmp_path / name / "cache"),
                        gradient_checkpointing=True, **keys)
    assert main(["glance", "--config", str(cfg)]) == 0
    return tmp_path / name


@pytest.fixture(scope="module")
def plain(tiny_flux, tmp_path_factory):
    return run(tmp_path_factory.mktemp("plain"), tiny_flux, "plain")


def entries(root: Path, kind: str) -> list[dict]:
    return [load_file(f) for f in sorted(cache_files(root / "cache", kind))]


def same_entries(a: Path, b: Path, kind: str):
    ea, eb = entries(a, kind), entries(b, kind)
    assert len(ea) == len(eb) == 1
    assert ea[0].keys() == eb[0].keys() and all(torch.equal(ea[0][k], eb[0][k]) for k in ea[0])


@pytest.mark.slow
def test_group_offload_everywhere_gives_the_same_run(plain, tiny_flux, tmp_path, monkeypatch):
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    from glancetune.train import job
    from glancetune.engine import encode

    hooked = []
    orig_build, orig_fill = job.Job.build_trainer, encode._fill

    def build(self, plan, rt, transformer, *a, **k):
        hooked.append(("transformer", _is_group_offload_enabled(transformer)))
        return orig_build(self, plan, rt, transformer, *a, **k)

    def fill(src, cfg, pipe, *a, **k):
        orig_fill(src, cfg, pipe, *a, **k)
        hooked.extend((n, _is_group_offload_enabled(getattr(pipe, n))) for n in ("text_encoder", "text_encoder_2",
                                                                                  "vae"))

    monkeypatch.setattr(job.Job, "build_trainer", build)
    monkeypatch.setattr(encode, "_fill", fill)
    disk = tmp_path / "offload"
    disk.mkdir()
    (disk / "theirs.txt").write_text("not ours")
    root = run(tmp_path, tiny_flux, "offloaded", enable_group_offload=True, group_offload_text_encoder=True,
               group_offload_vae=True, group_offload_blocks_per_group=1)
    assert sorted(hooked) == [("text_encoder", True), ("text_encoder_2", True), ("transformer", True), ("vae", True)]
    assert lora_bytes(root / "output") == lora_bytes(plain / "output")
    same_entries(root, plain, "text")
    same_entries(root, plain, "vae")
    # encoders offloaded to disk: our temporary folders are gone, a file we did not write stays
    root2 = run(tmp_path, tiny_flux, "disk", group_offload_text_encoder=True, group_offload_vae=True,
                group_offload_to_disk_path=str(disk))
    assert sorted(p.name for p in disk.iterdir()) == ["theirs.txt"]
    same_entries(root2, plain, "text")
    same_entries(root2, plain, "vae")


def test_leaf_level_disk_offload_of_tied_modules_is_refused(tiny_flux, tmp_path, capsys):
    """diffusers' leaf_level disk offload gives T5 (its embedding is `shared` and `encoder.embed_tokens`) wrong
    outputs; glancetune refuses it in one line and leaves nothing behind."""
    cfg = write_configs(tmp_path, tiny_flux, steps=1, cache_dir=str(tmp_path / "cache"),
                        group_offload_text_encoder=True, group_offload_type="leaf_level",
                        group_offload_to_disk_path=str(tmp_path / "offload"))
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert err == ("error: group_offload_to_disk_path: T5EncoderModel uses one weight under two names (shared.weight, "
                   "encoder.embed_tokens.weight), which diffusers' leaf_level disk offload restores wrongly; use "
                   "group_offload_type block_level, or offload to memory")
    assert not any((tmp_path / "offload").iterdir()) and not (tmp_path / "output").exists()


@pytest.mark.parametrize("keys,why", [
    (dict(group_offload_type="leaf_level"), "leaf_level breaks gradient-checkpoint recomputation"),
    (dict(group_offload_to_disk_path="x"), "writes the blocks once, so LoRA updates would be lost"),
    (dict(gradient_checkpointing=False), "without gradient_checkpointing backward needs"),
    (dict(base_model_precision="int8-quanto"), "cannot move optimum-quanto weights (training: torch"),
    (dict(base_model_precision="nf4-bnb"), "NF4 weights through the offload hooks crashed on CUDA with an illegal"),
])
def test_offload_forms_that_cannot_train_are_one_line(tiny_flux, tmp_path, capsys, keys, why):
    cfg = write_configs(tmp_path, tiny_flux, steps=1, enable_group_offload=True,
                        **{"gradient_checkpointing": True, **keys})
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert err.startswith("error: enable_group_offload: ") and why in err
    assert not (tmp_path / "output").exists()


def test_group_offload_of_a_quanto_text_encoder_is_one_line(tiny_flux, tmp_path, capsys):
    """The hooks leave optimum-quanto weights on the CPU (H200: a device-mismatch crash in the first forward; NF4
    crashed too, refused the same way on a GPU), so the combination is refused before anything loads, naming the
    key and what works instead."""
    cfg = write_configs(tmp_path, tiny_flux, steps=1, text_encoder_2_precision="int8-quanto",
                        group_offload_text_encoder=True)
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert err.startswith("error: group_offload_text_encoder: not with text_encoder_2_precision int8-quanto: the "
                          "offload hooks cannot move optimum-quanto weights")
    assert err.endswith("use text_encoder_2_precision int8-torchao or no_change with group offload, or int8-quanto "
                        "without it")
    assert not (tmp_path / "output").exists()


@pytest.mark.slow
def test_group_offload_of_a_torchao_base_gives_the_same_run(tiny_flux, tmp_path):
    """torchao weights move through diffusers' hooks (quanto's cannot, refused above): an int8-torchao base with
    the trained transformer group-offloaded writes the same LoRAs as without."""
    a = run(tmp_path, tiny_flux, "torchao", base_model_precision="int8-torchao")
    b = run(tmp_path, tiny_flux, "torchao-offloaded", base_model_precision="int8-torchao", enable_group_offload=True)
    assert lora_bytes(a / "output") == lora_bytes(b / "output")


def test_stream_needs_cuda(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, steps=1, group_offload_vae=True, group_offload_use_stream=True)
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert err == "error: group_offload_use_stream: needs a CUDA device (this run is on cpu)"


@pytest.mark.slow
def test_text_encoder_precision_quantizes_and_keys_the_cache(plain, tiny_flux, tmp_path, monkeypatch):
    from optimum.quanto import QLinear

    from glancetune.engine import encode

    seen = {}
    orig = encode._fill

    def fill(src, cfg, pipe, *a, **k):
        seen["t5"] = any(isinstance(m, QLinear) for m in pipe.text_encoder_2.modules())
        seen["clip"] = any(isinstance(m, QLinear) for m in pipe.text_encoder.modules())
        orig(src, cfg, pipe, *a, **k)

    monkeypatch.setattr(encode, "_fill", fill)
    root = run(tmp_path, tiny_flux, "te", text_encoder_2_precision="int8-quanto")
    assert seen == {"t5": True, "clip": False}
    (q,), (p,) = entries(root, "text"), entries(plain, "text")
    assert q.keys() == p.keys()
    assert any(not torch.equal(q[k], p[k]) for k in q)  # an int8 T5 embedding is not the plain one
    same_entries(root, plain, "vae")
    # the keys differ, so one cache holds both: run it again into a copy of the plain run's cache
    shutil.copytree(plain / "cache", tmp_path / "shared")
    cfg = write_configs(tmp_path / "te2", tiny_flux, steps=1, cache_dir=str(tmp_path / "shared"),
                        text_encoder_2_precision="int8-quanto")
    assert main(["glance", "--config", str(cfg)]) == 0
    assert sorted(str(d.get("precision")) for d in descriptions(tmp_path / "shared", "text")) == [
        "None", "{'text_encoder_2': 'int8-quanto'}"]


def test_text_encoder_key_the_family_lacks_is_one_line(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, steps=1, text_encoder_3_precision="int8-quanto")
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert err == ("error: text_encoder_3_precision: flux has 2 text encoder(s) (text_encoder, text_encoder_2); "
                   "remove the key or set it to no_change")


@pytest.mark.slow
def test_offload_during_startup_releases_text_encoders_before_the_vae(plain, tiny_flux, tmp_path, monkeypatch):
    from glancetune.engine import encode

    states = []
    orig = encode._place

    def place(cfg, module, name, *a, **k):
        if name == "vae":
            states.append(cfg.offload_during_startup)
        return orig(cfg, module, name, *a, **k)

    real_fill = encode._fill

    def fill(src, cfg, pipe, *a, **k):
        states.append(("text encoders at start", pipe.text_encoder is not None))
        real_fill(src, cfg, pipe, *a, **k)
        states.append(("text encoders at end", pipe.text_encoder is not None))

    monkeypatch.setattr(encode, "_place", place)
    monkeypatch.setattr(encode, "_fill", fill)
    root = run(tmp_path, tiny_flux, "startup", offload_during_startup=True)
    assert states == [("text encoders at start", True), True, ("text encoders at end", False)]
    same_entries(root, plain, "text")
    same_entries(root, plain, "vae")
    assert lora_bytes(root / "output") == lora_bytes(plain / "output")


@pytest.mark.slow
def test_vae_tiling_keys_the_latents(plain, tiny_flux, tmp_path, monkeypatch):
    from glancetune.engine import encode

    seen = []
    orig = encode._fill

    def fill(src, cfg, pipe, *a, **k):
        seen.append((pipe.vae.use_tiling, pipe.vae.use_slicing))
        orig(src, cfg, pipe, *a, **k)

    monkeypatch.setattr(encode, "_fill", fill)
    root = run(tmp_path, tiny_flux, "tiles", vae_enable_tiling=True, vae_enable_slicing=True)
    assert seen == [(True, True)]
    assert [d.get("vae_tiling") for d in descriptions(root / "cache", "vae")] == [True]
    assert [d.get("vae_tiling") for d in descriptions(plain / "cache", "vae")] == [None]


@pytest.mark.slow
def test_base_model_default_dtype(tiny_flux, tmp_path, capsys, monkeypatch):
    from glancetune.train import job

    dtypes = []
    orig = job.Job.build_trainer

    def build(self, plan, rt, transformer, *a, **k):
        dtypes.append(transformer.transformer_blocks[0].attn.to_q.weight.dtype)
        return orig(self, plan, rt, transformer, *a, **k)

    monkeypatch.setattr(job.Job, "build_trainer", build)
    cfg = write_configs(tmp_path, tiny_flux, steps=1, base_model_default_dtype="fp32")
    assert main(["glance", "--config", str(cfg)]) == 0
    assert dtypes == [torch.float32]
    cfg = write_configs(tmp_path / "b", tiny_flux, steps=1, base_model_default_dtype="bf16")
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert err == ("error: base_model_default_dtype: bf16 weights need mixed_precision bf16 (this run computes in "
                   "float32 on cpu); use fp32 or leave it unset")


def test_dry_run_prints_the_memory_plan(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, steps=1, base_model_precision="int4-quanto",
                        text_encoder_2_precision="int8-torchao", group_offload_text_encoder=True,
                        offload_during_startup=True, vae_enable_tiling=True)
    capsys.readouterr()
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = out[out.index("memory plan"):].splitlines()[:4]
    assert plan[1].startswith("  encode (only on a cache miss; text encoders released before the VAE is placed")
    assert "text_encoder no_change" in plan[1] and "text_encoder_2 int8-torchao" in plan[1]
    assert "group-offloaded (block_level; CPU -> cpu as it runs)" in plan[1] and "tiling" in plan[1]
    assert plan[2].startswith("  train: transformer int4-quanto (") and "on cpu" in plan[2]
    assert not (tmp_path / "output").exists()


def test_dry_run_compares_the_plan_with_the_gpu(tiny_flux, tmp_path, capsys, monkeypatch):
    """On a GPU the plan says whether each phase's weights fit its memory (faked here: the CPU has none to compare);
    the encode phase counts only encoders on the device, the train phase nothing when the transformer is offloaded."""
    from glancetune.engine import memory

    cfg = write_configs(tmp_path, tiny_flux, steps=1)
    monkeypatch.setattr(memory, "device_total", lambda device: 10**12)
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    assert "  fits: the weights of each phase are under this GPU's 931 GiB" in capsys.readouterr().out
    monkeypatch.setattr(memory, "device_total", lambda device: 2**10)  # 1 KiB: nothing fits
    err = run_err(capsys, ["glance", "--config", str(cfg), "--dry-run"])  # the whole step's estimate refuses it
    assert "memory: the training step needs" in err and "more than this GPU" in err
    # below: the weights-only lines of the memory plan, with the step's estimate (plan/fit.py) out of the way
    from glancetune.plan import build

    monkeypatch.setattr(build, "resolve_memory", lambda cfg, *a, **k: (cfg.model_copy(
        update={"gradient_checkpointing": cfg.gradient_checkpointing is True}), None))
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "DOES NOT FIT" in x)
    assert "encode (~" in line and "train (~" in line and "group-offload that phase" in line
    cfg = write_configs(tmp_path / "b", tiny_flux, steps=1, enable_group_offload=True, gradient_checkpointing=True,
                        group_offload_text_encoder=True, group_offload_vae=True)
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    assert "fits: the weights of each phase" in capsys.readouterr().out  # everything offloaded: nothing resident
    # an int8 base counts at 8 bits whichever quantize_via (on the device it is quantized one block at a time)
    monkeypatch.setattr(memory, "device_total", lambda device: 300_000)  # 90%: between 8-bit and 32-bit sizes
    for precision, fits in (("int8-quanto", True), ("no_change", False)):
        cfg = write_configs(tmp_path / precision, tiny_flux, steps=1, base_model_precision=precision)
        assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if "fits" in x or "FIT" in x)
        assert line.startswith("  fits: the weights") if fits else (
            "DOES NOT FIT" in line and "train (~" in line and "encode (~" not in line)
    monkeypatch.undo()
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    assert "fits" not in capsys.readouterr().out.split("memory plan")[1]  # the CPU: no comparison


def test_block_parents():
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from glancetune.engine.memory import block_parents

    t5 = T5EncoderModel(T5Config(vocab_size=10, d_model=8, d_kv=4, d_ff=8, num_layers=2, num_heads=2))
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_attention_heads=2,
                                        num_hidden_layers=2))
    assert block_parents(t5) == ["encoder"]
    lists = [n for n, _ in clip.named_modules() if n.endswith("layers")]  # transformers 5: encoder.layers
    assert block_parents(clip) == lists[0].split(".")[:-1]


@pytest.mark.parametrize("build", ["qwen_image", "flux2-dev"])
def test_offloaded_encoder_onloads_what_runs(build, monkeypatch):
    """Each leaf that runs in a block-level offloaded text encoder has its weights onloaded at that moment. On the
    H200 the 24B Mistral-3 failed here: Mistral3Model (and Qwen2.5-VL's model) call language_model.embed_tokens
    before language_model's own hook onloads it. On the CPU both devices are the CPU, so the test follows the
    groups' onload/offload calls instead of devices."""
    from types import SimpleNamespace

    from diffusers.hooks.group_offloading import ModuleGroup

    from glancetune.families import tiny
    from glancetune.engine.memory import group_offload

    encoder = tiny.builders()[build]().text_encoder
    resident = {id(p) for p in encoder.parameters()}  # a weight no group holds never leaves the device

    def tensors(group):
        return [id(p) for m in group.modules for p in m.parameters()] + [id(p) for p in group.parameters]

    onload, offload = ModuleGroup.onload_, ModuleGroup.offload_
    monkeypatch.setattr(ModuleGroup, "onload_", lambda g: (resident.update(tensors(g)), onload(g))[1])
    monkeypatch.setattr(ModuleGroup, "offload_", lambda g: (resident.difference_update(tensors(g)), offload(g))[1])
    cfg = SimpleNamespace(group_offload_type="block_level", group_offload_blocks_per_group=1,
                          group_offload_use_stream=False, group_offload_to_disk_path=None)
    group_offload(encoder, cfg, torch.device("cpu"))
    assert len(resident) < len(list(encoder.parameters())) / 2  # the block lists are offloaded
    missing = []
    for name, leaf in encoder.named_modules():
        if not list(leaf.children()) and list(leaf.parameters(recurse=False)):
            leaf.register_forward_pre_hook(lambda m, a, name=name: missing.extend(
                [name] if any(id(p) not in resident for p in m.parameters(recurse=False)) else []))
    with torch.no_grad():
        encoder(input_ids=torch.randint(20, 200, (1, 12)), attention_mask=torch.ones(1, 12, dtype=torch.long))
    assert not missing, f"ran with offloaded weights: {sorted(set(missing))}"


@pytest.mark.slow
def test_checkpointing_backend_unsloth_holds_the_block_inputs_in_cpu_memory(plain, tiny_flux, tmp_path, monkeypatch):
    """`gradient_checkpointing_backend: unsloth`: every checkpointed block's inputs go through torch's save_on_cpu
    hooks (packed to CPU, unpacked for the recomputation) and the run writes the gradient-checkpointed run's bytes."""
    packed, unpacked = [], []
    real = torch.autograd.graph.save_on_cpu

    class Spy(real):
        def __init__(self, pin_memory=False, device_type="cuda"):
            super().__init__(pin_memory, device_type)
            pack, unpack = self.pack_hook, self.unpack_hook
            self.pack_hook = lambda t: (packed.append(tuple(t.shape)), pack(t))[1]
            self.unpack_hook = lambda p: (unpacked.append(1), unpack(p))[1]

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", Spy)
    root = run(tmp_path, tiny_flux, "unsloth", gradient_checkpointing_backend="unsloth")
    assert lora_bytes(root / "output") == lora_bytes(plain / "output")
    image = [s for s in packed if len(s) == 3 and s[1] == (128 // 16) ** 2]  # hidden states of the 64 image tokens
    assert len(image) >= 2 * 3 * 2 and unpacked  # 2 blocks x 3 steps x 2 phases, each brought back for backward


def test_checkpointing_backend_needs_checkpointing(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, steps=1, gradient_checkpointing_backend="unsloth")
    assert run_err(capsys, ["glance", "--config", str(cfg)]) == (
        "error: gradient_checkpointing_backend: unsloth acts on what gradient checkpointing keeps; set "
        "gradient_checkpointing true, or remove the key")
    cfg = write_configs(tmp_path, tiny_flux, steps=1, gradient_checkpointing=True,
                        gradient_checkpointing_backend="unsloth")
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    assert ("gradient checkpointing of every block, their inputs waiting in CPU memory (gradient_checkpointing_backend "
            "unsloth)") in capsys.readouterr().out


@pytest.mark.slow
def test_checkpointing_interval_checkpoints_every_nth_block(plain, tiny_flux, tmp_path, monkeypatch, capsys):
    """`gradient_checkpointing_interval: 2` on the tiny FLUX.1 (blocks 0 and 1): block 0 is checkpointed, block 1
    runs plainly; the LoRA bytes are the every-block run's (checkpointing never changes the math)."""
    import torch.utils.checkpoint as tc

    seen, real = [], tc.checkpoint
    monkeypatch.setattr(tc, "checkpoint", lambda fn, *a, **k: (seen.append(type(fn).__name__), real(fn, *a, **k))[1])
    root = run(tmp_path, tiny_flux, "every-2nd", gradient_checkpointing_interval=2)
    assert lora_bytes(root / "output") == lora_bytes(plain / "output")
    assert set(seen) == {"FluxTransformerBlock"} and len(seen) >= 3 * 2  # 3 steps x 2 phases, the double block only
    cfg = write_configs(tmp_path / "x", tiny_flux, steps=1, gradient_checkpointing_interval=2)
    assert run_err(capsys, ["glance", "--config", str(cfg)]) == (
        "error: gradient_checkpointing_interval: acts on gradient checkpointing; set gradient_checkpointing true, "
        "or remove the key")
    cfg = write_configs(tmp_path / "y", tiny_flux, steps=1, gradient_checkpointing=True,
                        gradient_checkpointing_interval=2)
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    assert "gradient checkpointing of one block in 2 (0, 2, 4, ...; the others keep their activations)" in capsys.readouterr().out


def test_dry_run_notes_the_measured_slow_settings(tiny_flux, tmp_path, capsys):
    from glancetune.engine.memory import OFFLOAD_TRAINING
    from glancetune.engine.quantize import INT4_TRAINING

    cfg = write_configs(tmp_path, tiny_flux, steps=1, base_model_precision="int4-quanto")
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"  note: {INT4_TRAINING}" in out and OFFLOAD_TRAINING not in out
    cfg = write_configs(tmp_path, tiny_flux, steps=1, gradient_checkpointing=True, enable_group_offload=True)
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"  note: {OFFLOAD_TRAINING}" in out and INT4_TRAINING not in out


def test_allocator_note_names_what_reserved_memory_holds():
    """After training on CUDA the job logs the caching allocator's counters (torch.cuda.memory_stats) next to the
    peaks: the line for a given set of counters (a CPU run has none to read)."""
    from glancetune.engine.memory import allocator_note

    stats = {"reserved_bytes.all.peak": 19.5 * 2**30, "inactive_split_bytes.all.peak": 5 * 2**29,
             "segment.all.peak": 412, "num_alloc_retries": 3, "num_ooms": 0}
    assert allocator_note(stats) == ("allocator (train): reserved peak 19.50 GiB, inactive split blocks peak 2.50 "
                                     "GiB, 412 segments at most, 3 cudaMalloc retries, 0 out-of-memory")
