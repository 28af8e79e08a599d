"""Whether the training step fits, decided before any weights load (engine/fit.py estimates it).

The budget is `memory_budget_gib` (a card of N GiB: plan a 24 GB setting on a bigger card, or in tests), else the
CUDA device's memory; on a CPU there is none and nothing is decided. A run fits when its estimate, plus 10% for
the allocator's reserve and 0.5 GiB for the CUDA context, is within the budget. `gradient_checkpointing: auto` is
on when the run would not fit without it. A `glance` or `train` run that does not fit stops here with one line
naming the cheapest measured change that fits.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import GlanceError

RESERVE, CONTEXT_GIB = 1.10, 0.5


@dataclass(frozen=True)
class MemoryEstimate:
    parts: dict  # GiB: weights, lora, activations, dequant, total
    budget_gib: float
    budget_source: str
    checkpointing_note: str  # how gradient_checkpointing was decided

    def line(self) -> str:
        p = self.parts
        head = (f"memory estimate of the training step (GiB allocated): weights {p['weights']:.3g} + LoRA "
                f"{p['lora']:.3g} + activations {p['activations']:.3g}"
                + (f" + 4-bit dequantization {p['dequant']:.3g}" if p["dequant"] else "") + f" = {p['total']:.3g}")
        return head + f"; fits {self.budget_source} ({self.budget_gib:g} GiB){self.checkpointing_note}"


def needed(total_gib: float) -> float:
    return total_gib * RESERVE + CONTEXT_GIB


def resolve_memory(cfg, command: str, info, targets: list[str], width: int, height: int, text_tokens: int, device,
                   compute_bits: int):
    """(the config with `gradient_checkpointing` decided, the estimate); refuses a run that does not fit."""
    from ..engine.adapters import count_trainable
    from ..engine.fit import cheapest_fit, describe_change, shape_of, train_gib
    from ..engine.memory import device_total

    budget, source = cfg.memory_budget_gib, "memory_budget_gib"
    if budget is None:
        total = device_total(device)
        budget, source = (total / 2**30, "this GPU") if total else (None, "")
    if budget is None:  # a CPU: nothing to decide against (auto is off)
        auto = cfg.gradient_checkpointing == "auto"
        return (cfg.model_copy(update={"gradient_checkpointing": False}) if auto else cfg), None
    shape = shape_of(info.transformer_config, count_trainable(info.transformer_config, cfg, targets), width, height,
                     text_tokens, edit=info.family.needs_control_image)
    settings = cfg.model_dump(include={"base_model_precision", "optimizer", "gradient_checkpointing",
                                       "gradient_checkpointing_backend"})
    note = ""
    if cfg.gradient_checkpointing == "auto":
        off = train_gib(shape, {**settings, "gradient_checkpointing": False}, compute_bits, cfg.train_batch_size,
                        2 if command == "glance" else 1)
        on = budget is not None and needed(off["total"]) > budget
        note = f"; gradient_checkpointing auto: {'on' if on else 'off'}" + (
            f" (~{off['total']:.1f} GiB without it)" if on else "")
        settings["gradient_checkpointing"] = on
        cfg = cfg.model_copy(update={"gradient_checkpointing": on})
    if budget is None:
        return cfg, None
    phases = 2 if command == "glance" else 1
    parts = train_gib(shape, settings, compute_bits, cfg.train_batch_size, phases)
    if needed(parts["total"]) > budget:
        found = cheapest_fit(shape, settings, (budget - CONTEXT_GIB) / RESERVE, compute_bits, cfg.train_batch_size,
                             phases)
        fix = (f"set {describe_change(found[0])} (est. {found[1]:.1f} GiB)" if found else
               "no measured setting fits it: use a bigger card, a lower resolution or rank, or enable_group_offload")
        raise GlanceError(f"memory: the training step needs ~{parts['total']:.3g} GiB (+10% reserve, +0.5 GiB "
                          f"context), more than {source} ({budget:g} GiB); {fix}")
    return cfg, MemoryEstimate(parts, budget, source, note)
