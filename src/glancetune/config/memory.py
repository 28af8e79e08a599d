"""The memory keys of the config (SimpleTuner's names): quantized weights, dtypes, diffusers' group offloading, VAE
tiling and slicing, which blocks gradient checkpointing covers and where it keeps their inputs. A pydantic base
class of `config.TrainConfig`, kept apart like the validation keys; `engine/quantize.py` and `engine/memory.py` act
on them. PLACEMENT_KEYS say where weights live, not what they are:
they may differ between a checkpoint and the run resuming it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# the weight precisions a config may name: precision -> (library, what that library calls it)
TABLE = {
    "int8-quanto": ("quanto", "qint8"), "int4-quanto": ("quanto", "qint4"), "int2-quanto": ("quanto", "qint2"),
    "fp8-quanto": ("quanto", "qfloat8"),
    "int8-torchao": ("torchao", "Int8WeightOnlyConfig"), "fp8-torchao": ("torchao", "Float8WeightOnlyConfig"),
    "nf4-bnb": ("bitsandbytes", "nf4"),
}
PRECISIONS = ("no_change", *TABLE)
# bits per weight of the stored form (scales and zero points not counted): the --dry-run memory plan
BITS = {"no_change": None, "int8-quanto": 8, "int4-quanto": 4, "int2-quanto": 2, "fp8-quanto": 8,
        "int8-torchao": 8, "fp8-torchao": 8, "nf4-bnb": 4}

PLACEMENT_KEYS = frozenset({
    "enable_group_offload", "group_offload_type", "group_offload_blocks_per_group", "group_offload_use_stream",
    "group_offload_to_disk_path", "group_offload_text_encoder", "group_offload_vae", "offload_during_startup",
    "vae_enable_slicing", "gradient_checkpointing_backend", "gradient_checkpointing_interval"})


class MemoryKeys(BaseModel):
    base_model_precision: Literal[PRECISIONS] = Field(
        "no_change", description="quantize the frozen transformer's weights (optimum-quanto, torchao, bitsandbytes: "
        "engine/quantize.py); LoRA stays fp32")
    base_model_default_dtype: Literal["bf16", "fp32"] | None = Field(
        None, description="dtype of the unquantized transformer weights (default: the mixed-precision dtype, bf16 "
        "on CUDA; fp32 keeps them in fp32 and computes under bf16 autocast)")
    text_encoder_1_precision: Literal[PRECISIONS] = Field("no_change", description="quantize the first text "
                                                          "encoder while caching (same choices)")
    text_encoder_2_precision: Literal[PRECISIONS] = Field("no_change", description="the second text encoder")
    text_encoder_3_precision: Literal[PRECISIONS] = Field("no_change", description="the third text encoder")
    text_encoder_4_precision: Literal[PRECISIONS] = Field("no_change", description="the fourth text encoder")
    quantize_via: Literal["accelerator", "cpu"] = Field(
        "accelerator", description="where quantization happens: on the training device, one block at a time, or "
        "on the CPU before moving there")
    enable_group_offload: bool = Field(False, description="diffusers group offloading of the trained transformer;"
                                                          " only in the one form that trains a LoRA correctly "
                                                          "(`block_level`, no stream, no disk path, "
                                                          "`gradient_checkpointing: true`, one process, no quanto"
                                                          " / nf4-bnb base); ~10x the step time (docs/memory.md)")
    group_offload_type: Literal["block_level", "leaf_level"] = Field("block_level", description="offload whole "
                                                                    "blocks or every leaf module")
    group_offload_blocks_per_group: int = Field(1, ge=1, description="blocks moved together (block_level)")
    group_offload_use_stream: bool = Field(False, description="prefetch the next group on a CUDA stream")
    group_offload_to_disk_path: str | None = Field(None, description="offload to files in this folder instead "
                                                   "of CPU memory")
    group_offload_text_encoder: bool = Field(False, description="group-offload the text encoders while caching")
    group_offload_vae: bool = Field(False, description="group-offload the VAE while caching")
    offload_during_startup: bool = Field(False, description="while caching, each encoder is on the device only "
                                         "while it encodes (the text encoders leave before the VAE arrives)")
    vae_enable_tiling: bool = Field(False, description="VAE encode/decode in tiles (large images in less memory)")
    vae_enable_slicing: bool = Field(False, description="VAE batch one image at a time")
    memory_budget_gib: float | None = Field(
        None, gt=0, description="plan for a card of this many GiB instead of the GPU at hand (the memory estimate, "
        "gradient_checkpointing auto and the refusal of a run that does not fit use it; e.g. 24 on an 80 GB card)")
    gradient_checkpointing_backend: Literal["torch", "unsloth"] = Field(
        "torch", description="with gradient_checkpointing: torch keeps each block's input on the device; unsloth "
        "holds them in (pinned) CPU memory and brings each back for its block's recomputation")
    gradient_checkpointing_interval: int | None = Field(
        None, ge=1, description="with gradient_checkpointing: checkpoint only every n-th block (1 = every block); "
        "the others keep their activations (faster, more memory)")
