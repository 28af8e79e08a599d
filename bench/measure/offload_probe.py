"""GPU feasibility probe for the memory keys (issue 10): which quantization backends train a LoRA on CUDA, and
whether diffusers' group offloading survives a LoRA training step (forward + backward + optimizer step).

A small random FLUX.1-layout transformer (bf16, 1024 image tokens) with one rank-8 LoRA; each case runs three
steps and compares the LoRA gradients of the first step with the plain bf16 on-device reference. Prints one JSON
line per case: ok / the error, relative gradient difference, peak memory, s/step.

    python3 bench/measure/offload_probe.py          # on the GPU machine (PYTHONPATH holds the carried wheels and src)
"""
import copy
import json
import os
import time
import traceback

import torch
from diffusers import FluxTransformer2DModel

from glancetune.engine.adapters import add_lora
from glancetune.engine.quantize import quantize_model

dev = torch.device("cuda")
torch.backends.cuda.enable_cudnn_sdp(False)
ARCH = dict(patch_size=1, in_channels=64, num_layers=4, num_single_layers=8, attention_head_dim=64,
            num_attention_heads=8, joint_attention_dim=512, pooled_projection_dim=256, guidance_embeds=True,
            axes_dims_rope=(8, 28, 28))
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_mlp", "proj_out", "ff.net.0.proj", "ff.net.2"]
torch.manual_seed(0)
BASE = FluxTransformer2DModel(**ARCH).to(torch.bfloat16)
side = 32
g = torch.Generator().manual_seed(1)
INPUTS = dict(hidden_states=torch.randn(1, side * side, 64, generator=g),
              encoder_hidden_states=torch.randn(1, 64, 512, generator=g),
              pooled_projections=torch.randn(1, 256, generator=g), timestep=torch.tensor([0.7]),
              guidance=torch.tensor([3.5]), txt_ids=torch.zeros(64, 3),
              img_ids=torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(side).float(), torch.arange(side).float(),
                                                 indexing="ij"), -1).reshape(-1, 3).float())


def lora_grads(model):
    return {n: p.grad.float().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}


def steps(model, n=3):
    """n LoRA steps; returns (first-step grads, loss, s/step of the last n-1)."""
    params = [p for n_, p in model.named_parameters() if "lora_" in n_]
    opt = torch.optim.AdamW(params, lr=1e-3)
    inp = {k: v.to(dev, torch.bfloat16 if v.is_floating_point() and k not in ("txt_ids", "img_ids") else v.dtype)
           for k, v in INPUTS.items()}
    first, times = None, []
    for i in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", torch.bfloat16):
            out = model(**inp, return_dict=False)[0]
        loss = out.float().pow(2).mean()
        loss.backward()
        if i == 0:
            first = lora_grads(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return first, float(loss), sum(times[1:]) / (n - 1)


def make(precision="no_change", gc=False, offload=None, order="lora_first", place=True):
    m = copy.deepcopy(BASE)
    m.requires_grad_(False)
    if precision != "no_change":
        m = m.to(dev)
        quantize_model(m, precision)
    if gc:
        m.enable_gradient_checkpointing()

    def lora():
        add_lora(m, "slow", rank=8, alpha=8, dropout=0.0, init="gaussian", targets=TARGETS, seed=0)
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.data = p.data.to(dev) if offload is None else p.data
    if order == "lora_first":
        lora()
    if offload is not None:
        m.enable_group_offload(onload_device=dev, **offload)
    elif place:
        m = m.to(dev)
    if order == "lora_last":
        lora()
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.data = p.data.to(dev)
    return m


REF = None


def case(name, **kw):
    global REF
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    row = {"case": name}
    try:
        m = make(**kw)
        grads, loss, sps = steps(m)
        if REF is None:
            REF = grads
        diff = max(float((grads[k] - REF[k]).norm() / (REF[k].norm() + 1e-12)) for k in REF) if set(grads) == set(
            REF) else f"grads for {len(grads)} of {len(REF)} LoRA tensors"
        row.update(ok=True, loss=round(loss, 6), max_rel_grad_diff=diff, s_per_step=round(sps, 4),
                   peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3))
        del m
    except Exception as e:
        row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:400]}",
                   where=traceback.format_exc().strip().splitlines()[-3][:200])
    print(json.dumps(row), flush=True)


print(json.dumps({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}), flush=True)
NEW_ONLY = bool(os.environ.get("NEW_ONLY"))  # session 10: only the reference and the quantized-offload cases
case("bf16 reference")
if NEW_ONLY:  # glancetune refuses quanto + enable_group_offload (CPU: "Couldn't swap QLinear.weight"); confirm on CUDA
    case("group offload block int8-quanto gc", precision="int8-quanto", gc=True,
         offload=dict(offload_type="block_level", num_blocks_per_group=1))
if not NEW_ONLY:
    case("bf16 gc", gc=True)
    for p in ("int8-quanto", "int4-quanto", "fp8-quanto", "int8-torchao", "fp8-torchao"):
        case(p, precision=p)
    for gc in (False, True):
        for stream in (False, True):
            for order in ("lora_first", "lora_last"):
                case(f"group offload block gc={gc} stream={stream} {order}", gc=gc, order=order,
                     offload=dict(offload_type="block_level", num_blocks_per_group=1, use_stream=stream))
    case("group offload leaf gc=True", gc=True, offload=dict(offload_type="leaf_level"))
    case("group offload block int8-torchao gc", precision="int8-torchao", gc=True,
         offload=dict(offload_type="block_level", num_blocks_per_group=1))


def bnb_case():
    from diffusers import BitsAndBytesConfig

    BASE.save_pretrained("/tmp/probe_transformer")
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return FluxTransformer2DModel.from_pretrained("/tmp/probe_transformer", quantization_config=q,
                                                  torch_dtype=torch.bfloat16)


def fp8_dynamic(m):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(m, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
              filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear) and "lora_" not in fqn)


def custom(name, build, offload=False):
    """`offload`: block-level group offload (gc on, applied before the adapters, as the job does) instead of .to()"""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    row = {"case": name}
    try:
        m = build()
        m.requires_grad_(False)
        if offload:
            m.enable_gradient_checkpointing()
            m.enable_group_offload(onload_device=dev, offload_type="block_level", num_blocks_per_group=1)
        add_lora(m, "slow", rank=8, alpha=8, dropout=0.0, init="gaussian", targets=TARGETS, seed=0)
        if offload:
            for n, q in m.named_parameters():
                if "lora_" in n:
                    q.data = q.data.to(dev)
        else:
            m = m.to(dev)
        grads, loss, sps = steps(m)
        diff = max(float((grads[k] - REF[k]).norm() / (REF[k].norm() + 1e-12)) for k in REF)
        row.update(ok=True, loss=round(loss, 6), max_rel_grad_diff=diff, s_per_step=round(sps, 4),
                   peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3))
    except Exception as e:
        row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:400]}",
                   where=traceback.format_exc().strip().splitlines()[-3][:200])
    print(json.dumps(row), flush=True)


custom("nf4-bnb (diffusers BitsAndBytesConfig)", bnb_case)
custom("group offload block nf4-bnb gc", bnb_case, offload=True)


def dyn():
    m = copy.deepcopy(BASE).to(dev)
    fp8_dynamic(m)
    return m


if not NEW_ONLY:
    custom("fp8 dynamic activation (torchao, PerRow)", dyn)
