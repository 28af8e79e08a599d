"""The runtime: `accelerate.Accelerator` owns device, mixed precision, gradient accumulation and processes.

One rule picks the device and compute dtype for training and for inference (`sampling/sampler.py` calls `select`):
"auto" is CUDA when available; mixed precision "auto" is bf16 on CUDA and fp32 elsewhere. Base weights are
loaded in that dtype, LoRA weights stay fp32, and the forward runs under the accelerator's autocast.

Process layouts (`accelerate launch --num_processes N -m glancetune ...`):
  ddp              every process trains every phase on its own slice of each batch; LoRA gradients are averaged
                   by accelerate's DistributedDataParallel wrapper
  parallel-phases  `glance` with `parallel_phases: true` on 2 processes: rank 0 trains slow, rank 1 fast, no
                   gradient sync; rank 1 hands its LoRA and state to rank 0, which writes everything
  fsdp             `accelerate launch --use_fsdp --fsdp_version 2 ...`: the transformer (base and LoRA weights)
                   sharded over the processes by accelerate's FSDP2 plugin; the LoRA weights are gathered whole
                   for saving, optimizer states are saved per process
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import GlanceError

log = logging.getLogger(__name__)


def select(device: str | None, mixed_precision: str | None = "auto") -> tuple[torch.device, str]:
    """(device, accelerate mixed_precision "bf16" | "no") for a device string and a precision choice."""
    if device in (None, "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = _device(device)
    mp = mixed_precision or "auto"
    if mp == "auto":
        mp = "bf16" if dev.type == "cuda" else "no"
    return dev, ("bf16" if mp == "bf16" else "no")


def _device(device: str) -> torch.device:
    """A device string checked against this machine: auto, cpu, cuda or cuda:N (an available GPU)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise GlanceError(f"device: {device!r} is not a device glancetune runs on; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GlanceError(f"device: {device!r} requested but no CUDA device is available (use cpu or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise GlanceError(f"device: {device!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def compute_dtype(mixed_precision: str) -> torch.dtype:
    return torch.bfloat16 if mixed_precision == "bf16" else torch.float32


def configure_backends(device: torch.device) -> None:
    """torch's cuDNN attention crashes on FLUX/Qwen shapes on H100/H200 (illegal memory access); the flash and
    memory-efficient kernels are used instead. Global, so gradient-checkpoint recomputation picks the same."""
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


def process_state(cfg):
    """accelerate's process state (ranks) for this config, created with the same device rule as the runtime:
    the first creation decides it for the whole process (a CPU run launched on several processes uses gloo)."""
    from accelerate import PartialState

    return PartialState(cpu=select(cfg.device, cfg.mixed_precision)[0].type == "cpu")


@dataclass
class Runtime:
    accelerator: object  # accelerate.Accelerator
    device: torch.device
    dtype: torch.dtype
    layout: str  # single | ddp | parallel-phases | fsdp

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


def make_runtime(cfg, command: str) -> Runtime:
    """The Accelerator for a train/glance job, and the process layout it implies."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import DistributedType

    want, mp = select(cfg.device, cfg.mixed_precision)
    if want.type == "cuda" and want.index is not None and process_state(cfg).num_processes == 1:
        torch.cuda.set_device(want)
    # find_unused_parameters: in `glance` both adapters are in the model and each step uses one
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    acc = Accelerator(cpu=want.type == "cpu", mixed_precision=mp,
                      gradient_accumulation_steps=cfg.gradient_accumulation_steps, kwargs_handlers=[ddp])
    layout = "single"
    if acc.distributed_type == DistributedType.FSDP:
        if not acc.is_fsdp2:
            raise GlanceError("accelerate FSDP: glancetune supports FSDP2 only (launch with --fsdp_version 2)")
        if cfg.parallel_phases:
            raise GlanceError("parallel_phases: not with FSDP (the phases share the sharded transformer)")
        layout = "fsdp"
    elif acc.num_processes > 1:
        layout = "ddp"
        if cfg.parallel_phases:
            if command != "glance" or acc.num_processes != 2:
                raise GlanceError(f"parallel_phases: needs `glance` on exactly 2 processes (got `{command}` on "
                                  f"{acc.num_processes})")
            layout = "parallel-phases"
    elif cfg.parallel_phases:
        log.warning("parallel_phases: only one process; the phases are interleaved in this process instead "
                    "(launch with `accelerate launch --num_processes 2`)")
    configure_backends(acc.device)
    return Runtime(acc, acc.device, compute_dtype(mp), layout)
