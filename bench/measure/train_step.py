"""Benchmark glancetune's own training step (add_lora + Trainer, the loop of `glancetune train/glance`) on a full-size
transformer architecture with random weights (--model: FLUX.1-dev by default, Qwen-Image, FLUX.2-klein-9B, FLUX.2-dev;
architectures and samples in bench/measure/step_models.py), to compare with the plain diffusers+peft anchor
(bench/measure/anchor_loop.py).

It goes through glancetune's code path exactly as `train/job.py` does: requires_grad_(False), optional
gradient checkpointing, `add_lora` (rank 32, alpha 32, gaussian init; FLUX.1: the anchor's 14 target modules,
other models: the family's targets as `lora_targets` picks them, its default or --lora-target),
`Trainer.run` on the accelerate runtime (eval loss before, the step loop with clip + AdamW + LR schedule), one
phase or slow+fast interleaved (--phases 2). Steady-state time is taken from a step-end hook: warm-up steps are excluded, each timed step ends with
torch.cuda.synchronize(). Prints one JSON line (last line of output).

Usage on the GPU machine (PYTHONPATH must hold diffusers and `src`):
    python3 bench/measure/train_step.py [--model flux1|qwen|flux2-klein-9b|flux2-dev] --gc 1|0 [--steps 8] [--warmup 3]
        [--phases 1|2] [--precision int8-quanto|nf4-bnb] [--group-offload] [--compile] [--fp8] [--tread 0.5]
peak_train_gib is the timed steps' peak; peak_warmup_gib also holds the build (the bf16 weights before quantizing).
Locally, on the CPU, to check the logic (tiny transformers of the same classes; see bench/measure/step_models.py):
    python bench/measure/train_step.py --tiny --device cpu [--model ...]
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

p = argparse.ArgumentParser()
p.add_argument("--model", default="flux1", choices=("flux1", "qwen", "flux2-klein-9b", "flux2-dev"))
p.add_argument("--lora-target", default=None, help="LoRA target preset (all | attention | mlp | tiny); default: "
               "FLUX.1 the anchor's 14 modules, other models the family default")
p.add_argument("--gc", type=int, default=1, help="gradient checkpointing on (1) or off (0)")
p.add_argument("--gc-interval", type=int, default=None, help="gradient_checkpointing_interval (every n-th block)")
p.add_argument("--gc-backend", default="torch", choices=("torch", "unsloth"),
               help="gradient_checkpointing_backend (unsloth: the block inputs wait in pinned CPU memory)")
p.add_argument("--steps", type=int, default=8, help="timed steps")
p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
p.add_argument("--res", type=int, default=1024)
p.add_argument("--rank", type=int, default=32)
p.add_argument("--device", default="cuda")
p.add_argument("--tiny", action="store_true", help="tiny transformer config (logic check on CPU)")
p.add_argument("--precision", default="no_change", help="base_model_precision (e.g. int8-quanto)")
p.add_argument("--phases", type=int, choices=(1, 2), default=1, help="2: slow and fast interleaved (glance); "
               "times are per phase step")
p.add_argument("--group-offload", action="store_true", help="variant: enable_group_offload (block_level, one "
               "block per group, no stream), applied after quantizing and before the adapters, as the job does")
p.add_argument("--compile", action="store_true", help="variant: regional compile (compile_repeated_blocks)")
p.add_argument("--compile-mode", default=None, help="with --compile: torch.compile mode (reduce-overhead: CUDA "
               "graphs of each block; max-autotune-no-cudagraphs)")
p.add_argument("--fp8", action="store_true", help="variant: torchao float8 training matmuls for the frozen base "
               "linears (convert_to_float8_training before the adapters; dynamic scaling): measure before building")
p.add_argument("--tread", type=float, default=0.0, help="variant: TREAD route with this selection_ratio over blocks "
               "2..-2 (0: off)")
p.add_argument("--attention-backend", metavar="NAME", help="variant: diffusers' attention dispatcher backend "
               "(transformer.set_attention_backend: _native_flash, _native_efficient, _native_math, flash, ...); "
               "default: diffusers' native SDPA, as the job")
p.add_argument("--keep-mask", action="store_true", help="Qwen-Image: the caption mask of ones as cached (the "
               "masked attention of glancetune before session 13); default: as the job, Family.training_text")
p.add_argument("--profile", metavar="FILE", help="torch.profiler over the timed steps: the top kernels by device "
               "time to FILE, and device-busy seconds per step (kernel time) and launches per step in the JSON line")
p.add_argument("--optimizer", default="adamw", help="optimizer key (adamw, adamw8bit, ...)")
p.add_argument("--sync", choices=("step", "ends"), default="step",
               help="step: synchronize after every step (per-step times); ends: only at the timing boundaries")
a = p.parse_args()

import diffusers, peft, transformers  # noqa: E402

from glancetune.config.schema import TrainConfig  # noqa: E402
from glancetune.train.hooks import Hook, Hooks, RunInfo  # noqa: E402
from glancetune.engine.adapters import add_lora, lora_targets  # noqa: E402
from glancetune.train.loop import Trainer  # noqa: E402
from glancetune.train.objectives import objective  # noqa: E402
from glancetune.plan.build import training_guidance  # noqa: E402
from glancetune.engine.runtime import make_runtime  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_models import MODELS, build  # noqa: E402

dev = torch.device(a.device)
cuda = dev.type == "cuda"
dtype = torch.bfloat16 if cuda else torch.float32
info = dict(torch=torch.__version__, diffusers=diffusers.__version__, peft=peft.__version__,
            transformers=transformers.__version__, gpu=torch.cuda.get_device_name(0) if cuda else "cpu")
print("versions", json.dumps(info), flush=True)

# the anchor's 14 FLUX.1 targets (all attention + MLP linears of double and single blocks)
TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_q_proj", "add_v_proj", "to_add_out",
           "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out"]
model = MODELS[a.model]
family = model.family()
res = min(a.res, 128) if a.tiny else a.res
tokens = (res // 16) ** 2  # VAE /8, then 2x2 packing

total_steps = a.warmup + a.steps
# the real config schema: its defaults are the trainer's (AdamW 2e-3, constant LR, clip 1.0)
cfg = TrainConfig(data_backend_config="unused", max_train_steps=total_steps, seed=0, checkpointing_steps=0,
                  optimizer=a.optimizer, mixed_precision="bf16" if cuda else "no", device=a.device,
                  lora_target=a.lora_target, enable_group_offload=a.group_offload,
                  gradient_checkpointing=bool(a.gc))
# LoRA targets as Plan picks them (lora_targets); FLUX.1 without --lora-target: the anchor's list, as before
targets = TARGETS if a.model == "flux1" and a.lora_target is None else lora_targets(family, cfg)[1]

torch.manual_seed(0)
transformer, sample, txt, build_s = build(a.model, a.tiny, res, dev, dtype)
nparam = sum(q.numel() for q in transformer.parameters())
print(f"built {model.label} arch {'(tiny) ' if a.tiny else ''}{nparam / 1e9:.3f}B params in {build_s:.1f}s, "
      f"{tokens} image + {txt} text tokens", flush=True)

# as Job.load_transformer: quantized base (base_model_precision), frozen, then gradient checkpointing, then adapters
from glancetune.engine.quantize import quantize_model  # noqa: E402



def nf4_like_from_pretrained(model):
    """nf4-bnb is applied while loading (`PipelineQuantizationConfig` in the job); a full-size folder does not fit the
    GPU machine's disk, so diffusers' own bitsandbytes quantizer is run here over the random weights, in the calls
    from_pretrained makes (preprocess on a meta skeleton, create_quantized_param per weight, postprocess)."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from diffusers import BitsAndBytesConfig
    from diffusers.quantizers import DiffusersAutoQuantizer

    state = model.state_dict()
    with init_empty_weights():
        skeleton = type(model).from_config(model.config)
    quantizer = DiffusersAutoQuantizer.from_config(BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype), pre_quantized=False)
    quantizer.preprocess_model(model=skeleton, device_map=None, keep_in_fp32_modules=[])
    for name in list(state):
        value = state.pop(name)
        if quantizer.check_if_quantized_param(skeleton, value, name, state):
            quantizer.create_quantized_param(skeleton, value, name, dev, state)
        else:
            set_module_tensor_to_device(skeleton, name, dev, value=value)
        del value
    quantizer.postprocess_model(skeleton)
    return skeleton


t0 = time.time()
if a.precision == "nf4-bnb":
    transformer = nf4_like_from_pretrained(transformer)
else:
    quantize_model(transformer, a.precision)
if cuda:
    torch.cuda.empty_cache()
    print(f"after quantize: {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated (quantize "
          f"{time.time() - t0:.1f}s)", flush=True)
if a.group_offload:  # Job.load_transformer: quantized, then diffusers' hooks keep the blocks on the CPU
    from glancetune.engine.memory import group_offload  # noqa: E402

    group_offload(transformer, cfg, dev)
    if cuda:
        torch.cuda.empty_cache()
        print(f"after group offload: {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated", flush=True)
if a.fp8:  # every base nn.Linear whose sizes fp8 matmuls take becomes a torchao Float8Linear; LoRA wraps it
    from torchao.float8 import convert_to_float8_training

    convert_to_float8_training(transformer, module_filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear)
                               and m.in_features % 16 == 0 and m.out_features % 16 == 0)
    print(f"fp8 linears: {sum(type(m).__name__ == 'Float8Linear' for m in transformer.modules())}", flush=True)
transformer.requires_grad_(False)
if a.gc:
    from glancetune.engine.memory import enable_checkpointing  # noqa: E402

    enable_checkpointing(transformer, a.gc_backend, dev, a.gc_interval)
params = add_lora(transformer, "slow", rank=a.rank, alpha=float(a.rank), dropout=0.0, init="gaussian",
                  targets=targets, seed=0)
if a.group_offload:  # as Job.build_trainer: adapters of offloaded blocks are made on the CPU; they live on the device
    for q in params:
        q.data = q.data.to(dev)
n_lora = sum(q.numel() for q in params)
print(f"lora params {n_lora / 1e6:.1f}M in {len(params)} tensors"
      + (f", {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated" if cuda else ""), flush=True)

# Glance slow/fast-like sigma lists (FLUX.1-dev 1024^2 ladder; for every model: the values do not change the cost)
SIGMAS = {"slow": (1.0, 0.9775, 0.9526, 0.9249, 0.8941), "fast": (0.8627, 0.7293, 0.5621, 0.3291, 0.0488)}
marks = {}


def sync():
    if cuda:
        torch.cuda.synchronize()


class Timing(Hook):
    """Host time at each job step's end (synchronised), peak memory after warm-up."""

    def on_step_end(self, run, step):
        if a.sync == "step" or step in (a.warmup, total_steps):
            sync()
        marks.setdefault("t", []).append(time.perf_counter())
        if a.profile and step in (a.warmup, total_steps):
            profile_edge(step == a.warmup)
        if step == a.warmup and cuda:
            marks["peak_warmup_gib"] = torch.cuda.max_memory_allocated() / 2**30
            marks["resident_gib"] = torch.cuda.memory_allocated() / 2**30  # weights, LoRA, optimizer states
            torch.cuda.reset_peak_memory_stats()
        if step == total_steps and cuda:
            marks["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30

    def on_log(self, run, records):
        marks.setdefault("losses", []).extend(r.loss for r in records)


def profile_edge(start: bool) -> None:
    """Start torch.profiler after the warm-up; at the end, sum the kernels' device time (is the step bound by the
    device's work, or by launching it?) and write the top kernels to --profile."""
    from torch.profiler import ProfilerActivity, profile

    if start:
        marks["prof"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else
                                [ProfilerActivity.CPU])
        marks["prof"].start()
        return
    prof = marks.pop("prof")
    prof.stop()
    from torch.autograd import DeviceType

    events = prof.key_averages()
    # a kernel's time shows twice: on its own (device) event and as the self device time of the operator that
    # launched it; the table's "Self CUDA time total" counts the operators (session 14's first figures summed both)
    busy = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CPU) / 1e6  # us -> s
    kernels = [e for e in events if e.device_type != DeviceType.CPU and e.self_device_time_total > 0]
    marks["profile"] = {"device_busy_s_per_step": round(busy / a.steps / a.phases, 4),
                        "kernel_launches_per_step": sum(e.count for e in kernels) // (a.steps * a.phases)}
    Path(a.profile).write_text(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                            row_limit=25))


if a.attention_backend:  # measure before building a config key (issue 12: attention backend choice)
    transformer.set_attention_backend(a.attention_backend)
if not a.keep_mask:  # as Job.prepared: the family's training inputs (Qwen-Image: a mask of ones is dropped)
    sample.text = family.training_text(sample.text)
rt = make_runtime(cfg, "glance")
params = {"slow": params}
if a.phases == 2:  # the glance job: both adapters on the transformer, interleaved
    params["fast"] = add_lora(transformer, "fast", rank=a.rank, alpha=float(a.rank), dropout=0.0, init="gaussian",
                              targets=targets, seed=0)
if a.tread:  # as Job.build_trainer: the routing hooks after the adapters, compile after both
    from glancetune.engine import tread

    n = family.tread_blocks_count(transformer.config)
    tread.install(transformer, family, {"routes": [{"selection_ratio": a.tread, "start_layer_idx": min(2, n - 1),
                                                     "end_layer_idx": -2 if n > 3 else -1}]})
if a.compile:
    from glancetune.engine.speed import compile_blocks

    compile_blocks(transformer, a.compile_mode)
plan = SimpleNamespace(groups=[[0]], shuffle=True, conditioning_choices=lambda: None)
# guidance as Plan picks it: FLUX.1-dev and FLUX.2-dev 1.0 (their guidance embedding), None for the others
guidance = training_guidance(family, dict(transformer.config), cfg)
trainer = Trainer(cfg, family, transformer, [sample], rt, guidance, plan, objective("flow"))
states = [trainer.new_phase(name, SIGMAS[name], ps, total_steps) for name, ps in params.items()]
run = RunInfo("unused", list(params), total_steps, 0, logging_steps=10)
sync()
t_run0 = time.perf_counter()
summary = trainer.run(states, Hooks([Timing()]), run, 0.0)
sync()
t_run = time.perf_counter() - t_run0

t = marks["t"]
per_step = [(t[i] - t[i - 1]) / a.phases for i in range(a.warmup, total_steps)]  # per phase step
s_per_step = (t[-1] - t[a.warmup - 1]) / a.steps / a.phases
losses = marks["losses"]
losses_ok = all(map(lambda v: v == v and abs(v) < 1e6, losses))
out = dict(bench="glancetune", model=a.model + ("-tiny" if a.tiny else ""), res=res, gc=a.gc, rank=a.rank,
           phases=a.phases, precision=a.precision, group_offload=a.group_offload, compile=a.compile,
           compile_mode=a.compile_mode, tread=a.tread, keep_mask=a.keep_mask,
           attention_backend=a.attention_backend, **marks.get("profile", {}),
           fp8=a.fp8, gc_backend=a.gc_backend, gc_interval=a.gc_interval,
           sync=a.sync, warmup=a.warmup, steps=a.steps,
           train_s_per_step=round(s_per_step, 4), median_s_per_step=round(statistics.median(per_step), 4),
           min_s_per_step=round(min(per_step), 4), max_s_per_step=round(max(per_step), 4),
           peak_train_gib=round(marks["peak_gib"], 2) if "peak_gib" in marks else None,
           peak_warmup_gib=round(marks["peak_warmup_gib"], 2) if "peak_warmup_gib" in marks else None,
           resident_gib=round(marks["resident_gib"], 2) if "resident_gib" in marks else None,
           optimizer=a.optimizer,
           run_s=round(t_run, 2), to_steady_s=round(t[a.warmup - 1] - t_run0, 2), params_b=round(nparam / 1e9, 3), lora_m=round(n_lora / 1e6, 2),
           eval_before=round(states[0].eval_before, 5), losses_finite=losses_ok, first_loss=round(losses[0], 5),
           last_loss=round(losses[-1], 5))
print(json.dumps(out), flush=True)
sys.exit(0 if losses_ok else 1)
