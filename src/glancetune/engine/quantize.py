"""Quantized frozen weights (`base_model_precision`, `text_encoder_N_precision`, SimpleTuner's names).

One table says which library does each precision and how:
  *-quanto   optimum-quanto `quantize` + `freeze` on the loaded model (CPU and CUDA)
  *-torchao  torchao `quantize_` with a weight-only config on the loaded model (CPU and CUDA)
  nf4-bnb    bitsandbytes 4-bit NF4, applied while loading through diffusers' `PipelineQuantizationConfig`
             (diffusers and transformers need a CUDA GPU for it)
The transformer is quantized before the LoRA adapters are added; LoRA weights stay fp32 (layers named
`lora_A`/`lora_B` are never quantized, so `generate` can quantize after loading the adapters). A LoRA trained on a
quantized base is an ordinary LoRA (stock `load_lora_weights` into the bf16 base).
`quantize_via`: `accelerator` quantizes on the training device (fast), one block at a time (the device holds the
quantized weights plus one unquantized block); `cpu` before moving there (the device never holds unquantized
weights). nf4-bnb quantizes while loading, onto the GPU, whatever `quantize_via` says.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..config.memory import PRECISIONS, TABLE
from ..errors import GlanceError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
PACKAGE = {"quanto": "optimum-quanto", "torchao": "torchao", "bitsandbytes": "bitsandbytes"}
LORA_LAYERS = ["*lora_A*", "*lora_B*"]
# measured on the H200 (bench/RESULTS.md, "Memory: the other families"): full-size FLUX.2-dev, 1024², gc on
INT4_TRAINING = ("base_model_precision: int4-quanto trains very slowly on CUDA with optimum-quanto 0.2.7 (FLUX.2-dev "
                 "on an H200: 42.8 s/step against 2.5 for int8-quanto, for 23.1 vs 36.2 GiB); nf4-bnb is the "
                 "practical 4-bit base")


def library(precision: str) -> str | None:
    return TABLE[precision][0] if precision in TABLE else None


def at_load(precision: str) -> bool:
    """Applied while loading (a `quantization_config` for from_pretrained), not to a loaded model."""
    return library(precision) == "bitsandbytes"


def check_precision(key: str, precision: str, device: torch.device) -> None:
    """Before any weights load: the library is installed and the device can run the precision."""
    if precision == "no_change":
        return
    if precision not in TABLE:
        raise GlanceError(f"{key}: {precision!r} is not one of {', '.join(PRECISIONS)}")
    lib = library(precision)
    _import(key, precision, lib)
    if lib == "bitsandbytes" and device.type != "cuda":
        raise GlanceError(f"{key}: {precision} needs a CUDA GPU (bitsandbytes 4-bit loading through diffusers); "
                          f"on {device.type} use int4-quanto or int8-torchao")


def check_sampling_precision(precision: str, device) -> None:
    """`generate --base-model-precision`: quantizes after the LoRAs are loaded, so not the load-time ones."""
    check_precision("--base-model-precision", precision, device)
    if at_load(precision):
        raise GlanceError(f"--base-model-precision: {precision} is for training only so far; generate runs on "
                          + ", ".join(p for p in TABLE if not at_load(p)))


def _import(key: str, precision: str, lib: str):
    try:
        return __import__({"quanto": "optimum.quanto", "torchao": "torchao.quantization",
                                        "bitsandbytes": "bitsandbytes"}[lib], fromlist=["_"])
    except ImportError:
        raise GlanceError(f"{key}: {precision} needs {PACKAGE[lib]}, which is not installed; pip install "
                          f"'glancetune[quant]'") from None


def quantize_model(model, precision: str, key: str = "base_model_precision") -> None:
    """Quantize `model`'s linear weights in place and freeze them (no-op for `no_change` and for load-time
    precisions, which `load_config` handles)."""
    if precision == "no_change" or at_load(precision):
        return
    if precision not in TABLE:
        raise GlanceError(f"{key}: {precision!r} is not one of {', '.join(PRECISIONS)}")
    lib, name = TABLE[precision]
    mod = _import(key, precision, lib)
    if lib == "quanto":
        mod.quantize(model, weights=getattr(mod, name), exclude=LORA_LAYERS)
        mod.freeze(model)
        _autocast_inputs(model, mod)
    else:  # torchao: every nn.Linear except LoRA's own
        import torch

        config = getattr(mod, name)(**({"version": 2} if name == "Int8WeightOnlyConfig" else {}))
        mod.quantize_(model, config,
                      filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and "lora_" not in fqn)
    model.requires_grad_(False)
    log.debug("quantized %s to %s", type(model).__name__, precision)


def _autocast_inputs(model, quanto) -> None:
    """quanto's CUDA kernels (int4 tinygemm, fp8 marlin) take only bf16/fp16 activations, and autocast does not
    cast inputs for quanto's linear as it does for nn.Linear (a LayerNorm under autocast hands it fp32): each
    quantized module casts its input to the autocast dtype when autocast is on, as autocast would."""
    from optimum.quanto.nn import QModuleMixin

    def cast(module, args):
        x = args[0] if args else None
        if x is None or not x.is_floating_point():
            return None
        import torch

        kind = x.device.type
        if torch.is_autocast_enabled(kind) and x.dtype != torch.get_autocast_dtype(kind):
            return (x.to(torch.get_autocast_dtype(kind)), *args[1:])
        return None

    for m in model.modules():
        if isinstance(m, QModuleMixin):
            m.register_forward_pre_hook(cast)


def load_config(precisions: dict[str, str], dtype):
    """diffusers' PipelineQuantizationConfig for the components whose precision is applied while loading
    ({component: precision}), or None when there are none."""
    chosen = [c for c, p in precisions.items() if at_load(p)]
    if not chosen:
        return None
    from diffusers.quantizers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_backend="bitsandbytes_4bit", components_to_quantize=chosen,
                                      quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                                    "bnb_4bit_compute_dtype": dtype})


def place_and_quantize(model, precision: str, via: str, device, key: str = "base_model_precision", home=None):
    """Quantize in the order `quantize_via` asks for and leave the model on `home` (default `device`): a model
    that diffusers' hooks group-offload stays in CPU memory (`home` cpu) and, quantized on the accelerator, visits
    it one block at a time, so the device never holds the whole unquantized model (it did: 44 GiB of a 24B text
    encoder's bf16 weights, H200). A model loaded with a bitsandbytes config is already quantized and placed."""
    home = home or device
    if at_load(precision):
        return model.to(device)
    if precision == "no_change" or via == "cpu":
        quantize_model(model, precision, key)
        if precision == "int4-quanto" and getattr(home, "type", str(home)) != "cpu":
            log.warning("%s: int4-quanto with quantize_via cpu: optimum-quanto packs int4 weights for the CPU and "
                        "re-packs them for %s through one identity matmul per layer on the CPU, which can take "
                        "minutes per billion parameters; quantize_via accelerator (one block at a time on the GPU) or "
                        "int8-quanto avoid it", key, home)
        return model.to(home)
    import torch

    for parent, name, part in parts(model):  # one block at a time: the device holds one unquantized block at most
        part = part.to(device)
        if next(part.children(), None) is None:  # a bare layer: quantized inside a holder, which can replace it
            holder = torch.nn.ModuleDict({name: part})
            quantize_model(holder, precision, key)
            setattr(parent, name, holder[name].to(home))
        else:
            quantize_model(part, precision, key)
            part.to(home)
    return model.to(home)  # what lies outside the parts (the model's own parameters, if any)


def parts(module):
    """(parent, name, piece): `module` in pieces no larger than one block: each element of its block lists
    (ModuleList / Sequential) and each other child that holds no block list, whole. Every submodule lies in exactly
    one piece, so quantizing the pieces quantizes exactly the linears that quantizing the whole would."""
    import torch

    lists = (torch.nn.ModuleList, torch.nn.Sequential)
    for name, child in module.named_children():
        if isinstance(child, lists):
            yield from ((child, i, block) for i, block in child.named_children())
        elif any(isinstance(m, lists) for m in child.modules()):
            yield from parts(child)
        else:
            yield module, name, child
