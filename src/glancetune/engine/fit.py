"""The training step's memory, estimated before any weights load, and what to change when it does not fit.

    train peak (GiB allocated) = weights + LoRA + activations + dequantization
      weights      transformer parameters x bytes per weight: the compute dtype's (bf16 2, fp32 4) or the stored
                   form's plus ~4% of scales (8-bit 1.04, 4-bit 0.52)
      LoRA         both phases' adapters in fp32, one phase's gradients, both optimizers' states (adamw 8,
                   adamw_bf16 4, adamw8bit 2, prodigy 16 bytes per parameter)
      activations  tokens (image + control + text) x hidden width x blocks x batch x ACT bytes: 2.5 with gradient
                   checkpointing (each block's input kept, one block recomputed), 45 without; the unsloth backend
                   keeps the block inputs on the CPU (counted as 0.5)
      dequant      a 4-bit base: 0.1 x its bf16 weights (bitsandbytes dequantizes each weight for its matmuls)

The constants were fitted once to the measured table (docs/benchmarks.md#memory: full-size random FLUX.1-dev,
Qwen-Image, FLUX.2-klein-9B and FLUX.2-dev, 1024², rank 32, batch 1, on H100/H200); tests/test_fit.py holds that
table and the estimate's error on each row. Not measured against: TREAD, group offload (their savings are not
modelled: the estimate stays on the safe side), batch > 1, other resolutions.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config.memory import BITS

GIB = 2**30
ACT = {"off": 45.0, "torch": 2.5, "unsloth": 0.5}  # bytes per token x width x block
OPTIMIZER_BYTES = {"adamw": 8, "adamw_bf16": 4, "adamw8bit": 2, "prodigy": 16}
DEQUANT_4BIT = 0.1  # x the bf16 weights
# what to try, cheapest change first, when a run does not fit: the measured settings (docs/memory.md)
REMEDIES = ({"gradient_checkpointing": True},
            {"gradient_checkpointing": True, "optimizer": "adamw8bit"},
            {"gradient_checkpointing": True, "base_model_precision": "int8-quanto"},
            {"gradient_checkpointing": True, "base_model_precision": "int8-quanto", "optimizer": "adamw8bit"},
            {"gradient_checkpointing": True, "base_model_precision": "nf4-bnb", "optimizer": "adamw8bit"},
            {"gradient_checkpointing": True, "base_model_precision": "nf4-bnb", "optimizer": "adamw8bit",
             "gradient_checkpointing_backend": "unsloth"})


@dataclass(frozen=True)
class Shape:
    """What the estimate reads from the model and the run: parameter counts and the token geometry."""

    transformer_params: int
    lora_params: int  # per phase
    hidden: int
    blocks: int
    tokens: int  # per sample: image (+ control) + text


def shape_of(transformer_config: dict, lora_params: int, width: int, height: int, text_tokens: int,
             edit: bool = False) -> Shape:
    from .adapters import count_params, meta_transformer

    c = transformer_config
    image = (width // 16) * (height // 16) * (2 if edit else 1)
    return Shape(count_params(meta_transformer(c).parameters()), lora_params,
                 int(c.get("num_attention_heads", 1)) * int(c.get("attention_head_dim", 1)),
                 int(c.get("num_layers", 0)) + int(c.get("num_single_layers", 0)), image + text_tokens)


def weight_bytes(precision: str, compute_bits: int) -> float:
    bits = BITS.get(precision)
    return compute_bits / 8 if bits is None else bits / 8 * 1.04


def train_gib(shape: Shape, settings: dict, compute_bits: int = 16, batch: int = 1,
              phases: int = 2) -> dict[str, float]:
    """The train peak's parts and total in GiB for `settings` (base_model_precision, optimizer,
    gradient_checkpointing, gradient_checkpointing_backend); `phases`: adapters and optimizers held (a glance job
    2, a `train` job or a bare LoRA step 1)."""
    precision = settings.get("base_model_precision", "no_change")
    weights = shape.transformer_params * weight_bytes(precision, compute_bits)
    n = shape.lora_params
    lora = phases * n * 4 + n * 4 + phases * n * OPTIMIZER_BYTES.get(settings.get("optimizer", "adamw"), 8)
    mode = (settings.get("gradient_checkpointing_backend") or "torch") if settings.get("gradient_checkpointing") \
        else "off"
    acts = shape.tokens * shape.hidden * shape.blocks * batch * ACT[mode]
    dequant = DEQUANT_4BIT * shape.transformer_params * 2 if BITS.get(precision) == 4 else 0.0
    parts = {"weights": weights, "lora": lora, "activations": acts, "dequant": dequant}
    return {**{k: v / GIB for k, v in parts.items()}, "total": sum(parts.values()) / GIB}


def cheapest_fit(shape: Shape, settings: dict, budget_gib: float, compute_bits: int = 16, batch: int = 1,
                 phases: int = 2) -> tuple[dict, float] | None:
    """The first of REMEDIES (applied over `settings`) whose estimate fits `budget_gib`, and that estimate."""
    for change in REMEDIES:
        est = train_gib(shape, {**settings, **change}, compute_bits, batch, phases)["total"]
        if est <= budget_gib:
            return change, est
    return None


def describe_change(change: dict) -> str:
    return " and ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in change.items())
