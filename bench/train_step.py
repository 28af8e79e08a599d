"""Benchmark glancetune's own training step (add_lora + PhaseTrainer) on the full-size FLUX.1-dev transformer
architecture with random weights, to compare with the plain diffusers+peft anchor (bench/anchor_loop.py).

It goes through glancetune's code path exactly as `train/jobs.py` does: requires_grad_(False), optional
gradient checkpointing, `add_lora` (rank 32, alpha 32, gaussian init, the anchor's 14 target modules),
`PhaseTrainer.run` (eval loss before, the step loop with clip + AdamW + LR schedule, eval loss after).
Steady-state time is taken from the progress callback: warm-up steps are excluded, each timed step ends with
torch.cuda.synchronize(). Prints one JSON line (last line of output).

Usage on the GPU machine (PYTHONPATH must hold diffusers and `src`):
    python3 bench/train_step.py --gc 1|0 [--steps 8] [--warmup 3] [--fused-adam] [--compile]
Locally, on the CPU, to check the logic:
    python bench/train_step.py --tiny --device cpu
"""
import argparse
import json
import statistics
import sys
import time
from types import SimpleNamespace

import torch

p = argparse.ArgumentParser()
p.add_argument("--gc", type=int, default=1, help="gradient checkpointing on (1) or off (0)")
p.add_argument("--steps", type=int, default=8, help="timed steps")
p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
p.add_argument("--res", type=int, default=1024)
p.add_argument("--rank", type=int, default=32)
p.add_argument("--device", default="cuda")
p.add_argument("--tiny", action="store_true", help="tiny transformer config (logic check on CPU)")
p.add_argument("--fused-adam", action="store_true", help="variant: AdamW(fused=True) instead of the default")
p.add_argument("--compile", action="store_true", help="variant: regional compile (compile_repeated_blocks)")
p.add_argument("--sync", choices=("step", "ends"), default="step",
               help="step: synchronize after every step (per-step times); ends: only at the timing boundaries")
a = p.parse_args()

import diffusers, peft, transformers  # noqa: E402

from glancetune.families.flux import Flux1  # noqa: E402
from glancetune.train.lora import add_lora  # noqa: E402
from glancetune.train.loop import PhaseTrainer, Prepared  # noqa: E402

dev = torch.device(a.device)
cuda = dev.type == "cuda"
if cuda:
    # gpu.md finding 1: cuDNN SDPA crashes on FLUX shapes on H100 (glancetune's pick_device does the same)
    torch.backends.cuda.enable_cudnn_sdp(False)
dtype = torch.bfloat16 if cuda else torch.float32
info = dict(torch=torch.__version__, diffusers=diffusers.__version__, peft=peft.__version__,
            transformers=transformers.__version__, gpu=torch.cuda.get_device_name(0) if cuda else "cpu")
print("versions", json.dumps(info), flush=True)

# the anchor's 14 targets (all attention + MLP linears of double and single blocks)
TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_q_proj", "add_v_proj", "to_add_out",
           "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out"]

if a.tiny:
    arch = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
                axes_dims_rope=(4, 6, 6))
    res, txt = min(a.res, 128), 16
else:
    # the anchor's FLUX.1-dev constructor args
    arch = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
    res, txt = a.res, 512
side = res // 16  # VAE /8, then 2x2 packing
tokens = side * side

torch.manual_seed(0)
t0 = time.time()
torch.set_default_dtype(dtype)
with torch.device(dev):
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel(**arch)
torch.set_default_dtype(torch.float32)
nparam = sum(q.numel() for q in transformer.parameters())
print(f"built FLUX.1-dev arch {'(tiny) ' if a.tiny else ''}{nparam / 1e9:.3f}B params in {time.time() - t0:.1f}s, "
      f"{tokens} image + {txt} text tokens", flush=True)

# as Job.prepare: frozen base, then gradient checkpointing, then the phase's adapter
transformer.requires_grad_(False)
if a.gc:
    transformer.enable_gradient_checkpointing()
params = add_lora(transformer, "slow", rank=a.rank, alpha=float(a.rank), dropout=0.0, init="gaussian",
                  targets=TARGETS, seed=0)
n_lora = sum(q.numel() for q in params)
print(f"lora params {n_lora / 1e6:.1f}M in {len(params)} tensors", flush=True)
if a.compile:
    transformer.compile_repeated_blocks(fullgraph=True)

# one Prepared sample, shaped like Flux1.encode_prompts / encode_images output at this resolution
g = torch.Generator("cpu").manual_seed(1)
ids = torch.zeros(side, side, 3)
ids[..., 1] = torch.arange(side)[:, None]
ids[..., 2] = torch.arange(side)[None, :]
sample = Prepared(
    x0=torch.randn(1, tokens, 64, generator=g).float().to(dev),
    text={"encoder_hidden_states": torch.randn(1, txt, arch["joint_attention_dim"], generator=g).to(dev, dtype),
          "pooled_projections": torch.randn(1, arch["pooled_projection_dim"], generator=g).to(dev, dtype),
          "txt_ids": torch.zeros(txt, 3).to(dev, dtype)},
    image={"img_ids": ids.reshape(tokens, 3).to(dev, dtype)},
)

total_steps = a.warmup + a.steps
cfg = SimpleNamespace(learning_rate=2e-3, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-2, adam_epsilon=1e-8,
                      lr_scheduler="constant", lr_warmup_steps=0, seed=0, timestep_sampling="uniform",
                      max_train_steps=total_steps, gradient_accumulation_steps=1, train_batch_size=1, max_grad_norm=1.0)
# a Glance slow-phase-like sigma list (FLUX.1-dev 1024^2 shifted ladder, indices 0,2,4,6,8 of 50)
SIGMAS = (1.0, 0.9775, 0.9526, 0.9249, 0.8941)


class Trainer(PhaseTrainer):
    """PhaseTrainer; with --fused-adam, the same optimizer and schedule but AdamW(fused=True)."""

    def new_state(self, params, sigmas):
        state = super().new_state(params, sigmas)
        if a.fused_adam:
            c = self.cfg
            opt = torch.optim.AdamW(params, lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2),
                                    weight_decay=c.adam_weight_decay, eps=c.adam_epsilon, fused=True)
            state.optimizer = opt
            state.lr_schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        return state


def sync():
    if cuda:
        torch.cuda.synchronize()


marks = {}


def progress(step, loss):
    if a.sync == "step" or step in (a.warmup, total_steps):
        sync()
    now = time.perf_counter()
    marks.setdefault("t", []).append(now)
    if step == a.warmup:
        if cuda:
            marks["peak_warmup_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
    if step == total_steps and cuda:
        marks["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30


trainer = Trainer(cfg, Flux1(), transformer, [sample], dev, dtype, guidance=1.0)
sync()
t_run = time.perf_counter()
log = trainer.run(params, SIGMAS, progress=progress)
sync()
t_run = time.perf_counter() - t_run

t = marks["t"]
per_step = [t[i] - t[i - 1] for i in range(a.warmup, total_steps)]  # steps warmup+1 .. total
s_per_step = (t[-1] - t[a.warmup - 1]) / a.steps
losses_ok = all(map(lambda v: v == v and abs(v) < 1e6, log.losses))
out = dict(bench="glancetune", model="flux1" + ("-tiny" if a.tiny else ""), res=res, gc=a.gc, rank=a.rank,
           fused_adam=a.fused_adam, compile=a.compile, sync=a.sync, warmup=a.warmup, steps=a.steps,
           train_s_per_step=round(s_per_step, 4), median_s_per_step=round(statistics.median(per_step), 4),
           min_s_per_step=round(min(per_step), 4), max_s_per_step=round(max(per_step), 4),
           peak_train_gib=round(marks["peak_gib"], 2) if "peak_gib" in marks else None,
           peak_warmup_gib=round(marks["peak_warmup_gib"], 2) if "peak_warmup_gib" in marks else None,
           run_s=round(t_run, 2), phase_seconds=round(log.seconds, 2), params_b=round(nparam / 1e9, 3),
           lora_m=round(n_lora / 1e6, 2), eval_before=round(log.eval_before, 5), eval_after=round(log.eval_after, 5),
           losses_finite=losses_ok, first_loss=round(log.losses[0], 5), last_loss=round(log.losses[-1], 5))
print(json.dumps(out), flush=True)
sys.exit(0 if losses_ok else 1)
