"""Quantized base weights (`base_model_precision`, SimpleTuner's names): the frozen transformer's linear layers
are quantized by optimum-quanto before the LoRA adapters are added; LoRA weights stay fp32. A LoRA trained on a
quantized base is an ordinary LoRA (stock `load_lora_weights` into the bf16 base).

Implemented: `int8-quanto`, `int4-quanto`, `int2-quanto`, `fp8-quanto` (optimum-quanto; CPU and CUDA).
`quantize_via`: `accelerator` quantizes on the training device (fast), `cpu` before moving there (the device never
holds the unquantized weights).
"""
from __future__ import annotations

import logging

from ..errors import GlanceError

log = logging.getLogger(__name__)
QUANTO = {"int8-quanto": "qint8", "int4-quanto": "qint4", "int2-quanto": "qint2", "fp8-quanto": "qfloat8"}
PRECISIONS = ("no_change", *QUANTO)


def quantize_model(model, precision: str) -> None:
    """Quantize `model`'s weights in place and freeze them (no-op for `no_change`)."""
    if precision == "no_change":
        return
    if precision not in QUANTO:
        raise GlanceError(f"base_model_precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    try:
        import optimum.quanto as quanto
    except ImportError:
        raise GlanceError(f"base_model_precision: {precision} needs optimum-quanto, which is not installed; pip "
                          "install optimum-quanto (or pip install 'glancetune[quant]')") from None
    # LoRA layers (present when generate quantizes after loading the adapters) keep their own weights
    quanto.quantize(model, weights=getattr(quanto, QUANTO[precision]), exclude=["*lora_A*", "*lora_B*"])
    quanto.freeze(model)
    log.debug("quantized %s to %s", type(model).__name__, precision)


def place_and_quantize(model, precision: str, via: str, device):
    """Move to `device` and quantize, in the order `quantize_via` asks for."""
    if via == "cpu":
        quantize_model(model, precision)
        return model.to(device)
    model = model.to(device)
    quantize_model(model, precision)
    return model
