"""The training loop's extension points: a capability (logs, progress, checkpoints, validation) is a `Hook`.

The job and the loop call, in order:
  before_load()                  once, before the transformer loads (main process first): encoders may be loaded
                                 and released here (validation prompts); a hook holds what it needs from its
                                 constructor
  on_train_start(run)            once, after the model is loaded and both adapters exist (run: RunInfo; its
                                 `trainer` holds the transformer and the active adapter)
  on_step_end(run, step)         after job step `step` (1-based) advanced every phase of this process
  on_log(run, records)           every `logging_steps` job steps, at the end, and at any step where a hook's
                                 `wants_log(run, step)` is true (a checkpoint is due): the StepRecords since the
                                 previous call, with losses read from the device once; before on_step_end
  on_train_end(run, summary)     once, after the last step (summary: TrainSummary)
  on_interrupt(run, step)        SIGINT/SIGTERM: after the current step finished, before exiting

Hooks run on every process; a hook that writes files or prints checks `run.is_main`. A hook never changes the
training trajectory (it may read the model, e.g. for validation images, under `torch.no_grad()` with its own
generator).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class StepRecord:
    """One optimizer step of one phase."""

    step: int  # job step (1-based); in `glance` every job step advances slow and fast once each
    phase: str  # slow | fast | lora
    loss: float  # mean over the micro-batches of this optimizer step (this process)
    lr: float  # learning rate used by this step
    sigmas: list[float]  # the sigmas drawn for this step's samples (all micro-batches)
    grad_norm: float | None  # total norm before clipping (None when clipping is off)
    seconds: float  # wall time of this phase step on the host
    peak_memory_gib: float | None  # peak allocated device memory so far (None on CPU)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class TrainingModel(Protocol):
    """What a hook may read of the model being trained (the Trainer is one): the transformer holding the adapters,
    and the name of the adapter training has active (to restore it after sampling)."""

    transformer: Any
    active: str | None


@dataclass
class RunInfo:
    """What hooks may read about the run."""

    output_dir: str
    phases: list[str]  # the job's phases, in step order (with parallel_phases each process trains one)
    total_steps: int  # job steps
    start_step: int  # 0, or the step a resumed run continues after
    is_main: bool = True
    process_index: int = 0
    num_processes: int = 1
    logging_steps: int = 10
    config: dict = field(default_factory=dict)  # the resolved config (JSON-able)
    trainer: TrainingModel | None = None  # the transformer and its active adapter, for hooks that read the model


@dataclass
class TrainSummary:
    steps: int
    seconds_train: float  # loop wall time, excluding load/encode
    seconds_setup: float  # load + encode + adapters, before the first step
    final_loss: dict[str, float]  # per phase: mean of the last logging window


class Hook:
    """Base class: every method is a no-op, so a hook overrides only what it needs."""

    def before_load(self) -> None:
        pass

    def on_train_start(self, run: RunInfo) -> None:
        pass

    def on_step_end(self, run: RunInfo, step: int) -> None:
        pass

    def on_log(self, run: RunInfo, records: list[StepRecord]) -> None:
        pass

    def wants_log(self, run: RunInfo, step: int) -> bool:
        """True when this hook needs the records up to `step` handed out before its on_step_end."""
        return False

    def on_train_end(self, run: RunInfo, summary: TrainSummary) -> None:
        pass

    def on_interrupt(self, run: RunInfo, step: int) -> None:
        pass

    def close(self) -> None:
        """Release files and writers; called once, also after an error."""


class Hooks(Hook):
    """A list of hooks called in order."""

    def __init__(self, hooks: list[Hook] | None = None):
        self.hooks = list(hooks or [])

    def add(self, hook: Hook) -> None:
        self.hooks.append(hook)

    def before_load(self):
        for h in self.hooks:
            h.before_load()

    def on_train_start(self, run):
        for h in self.hooks:
            h.on_train_start(run)

    def on_step_end(self, run, step):
        for h in self.hooks:
            h.on_step_end(run, step)

    def on_log(self, run, records):
        for h in self.hooks:
            h.on_log(run, records)

    def wants_log(self, run, step):
        return any(h.wants_log(run, step) for h in self.hooks)

    def on_train_end(self, run, summary):
        for h in self.hooks:
            h.on_train_end(run, summary)

    def on_interrupt(self, run, step):
        for h in self.hooks:
            h.on_interrupt(run, step)

    def close(self):
        for h in self.hooks:
            h.close()
