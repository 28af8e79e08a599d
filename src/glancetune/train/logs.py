"""Training logs as hooks: a JSONL file, TensorBoard, Weights & Biases, and one progress bar / progress line.

`make_hooks` builds the list a run uses from `report_to`. Every hook writes on the main process only; the
optional-package checks (tensorboard, wandb) run on every process, so all processes fail alike and early.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, TextIO

from ..errors import GlanceError
from ..export.files import JSONL_NAME
from .hooks import Hook, RunInfo, StepRecord, TrainSummary

log = logging.getLogger(__name__)

REPORT_TO = ("none", "tensorboard", "wandb", "all")
WARMUP_STEPS = 2  # first steps of a process (compile, first allocation) left out of s/step and the ETA


def _finite(x: float | None) -> float | None:
    """JSON has no NaN / inf: a non-finite value is written as null."""
    return None if x is None or not math.isfinite(x) else float(x)


def record_json(r: StepRecord) -> dict[str, Any]:
    return {"step": r.step, "phase": r.phase, "loss": _finite(r.loss), "lr": _finite(r.lr),
            "sigmas": [_finite(s) for s in r.sigmas], "grad_norm": _finite(r.grad_norm),
            "seconds": _finite(r.seconds), "peak_memory_gib": _finite(r.peak_memory_gib)}


def by_step(records: list[StepRecord]) -> dict[int, list[StepRecord]]:
    """Records grouped by job step, in step order."""
    out: dict[int, list[StepRecord]] = {}
    for r in records:
        out.setdefault(r.step, []).append(r)
    return dict(sorted(out.items()))


def step_scalars(records: list[StepRecord]) -> dict[str, float]:
    """The scalars of one job step (its records, one per phase): the tags TensorBoard and wandb share."""
    out: dict[str, float] = {}
    for r in records:
        out[f"loss/{r.phase}"] = r.loss
        out[f"lr/{r.phase}"] = r.lr
        if r.grad_norm is not None:
            out[f"grad_norm/{r.phase}"] = r.grad_norm
        if r.sigmas:
            out[f"sigma/{r.phase}"] = sum(r.sigmas) / len(r.sigmas)
    out["seconds_per_step"] = sum(r.seconds for r in records)  # a job step runs every phase once
    mems = [r.peak_memory_gib for r in records if r.peak_memory_gib is not None]
    if mems:
        out["memory/peak_gib"] = max(mems)
    return out


class JsonlLog(Hook):
    """One JSON object per StepRecord, appended to `path` and flushed after every `on_log`.

    A resumed run (start_step > 0) first drops the lines of steps after start_step (a killed run may have logged
    past its last checkpoint); a fresh run (start_step 0) by the same rule starts an empty file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f: TextIO | None = None

    def on_train_start(self, run: RunInfo) -> None:
        if not run.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate(run.start_step)
        self._f = open(self.path, "a", encoding="utf-8")

    def _truncate(self, start_step: int) -> None:
        """Keep the lines with step <= start_step; rewrite atomically (temp file + os.replace)."""
        if not self.path.exists():
            return
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                step = None  # a half-written last line of a killed run, or not ours
            if isinstance(step, int) and step <= start_step:
                kept.append(line + "\n")
            else:
                dropped += 1
        if dropped == 0:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self.path)
        if start_step > 0:
            log.info("notice: %s: dropped %d line(s) after step %d (resumed run)", self.path.name, dropped,
                     start_step)

    def on_log(self, run: RunInfo, records: list[StepRecord]) -> None:
        if self._f is None:
            return
        for r in records:
            self._f.write(json.dumps(record_json(r)) + "\n")
        self._f.flush()

    def write_event(self, event: dict[str, Any]) -> None:
        """One more line (e.g. validation: `{"step", "event", ...}`); it has a step, so resuming truncates it alike."""
        if self._f is None:
            return
        self._f.write(json.dumps(event) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _missing(package: str, extra: str) -> GlanceError:
    return GlanceError(f"report_to: {package} is not installed; pip install {extra} (or set report_to none)")


class TensorBoardLog(Hook):
    """torch.utils.tensorboard.SummaryWriter in `logdir`; global_step is the job step. A resumed run opens the
    writer with purge_step = start_step + 1, so TensorBoard hides the old run's points after start_step."""

    def __init__(self, logdir: str | os.PathLike):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch raises ImportError when the tensorboard package is absent
            raise _missing("tensorboard", "tensorboard") from None
        self._cls = SummaryWriter
        self.logdir = Path(logdir)
        self.writer = None

    def on_train_start(self, run: RunInfo) -> None:
        if not run.is_main:
            return
        purge = run.start_step + 1 if run.start_step > 0 else None
        self.writer = self._cls(log_dir=str(self.logdir), purge_step=purge)

    def on_log(self, run: RunInfo, records: list[StepRecord]) -> None:
        if self.writer is None:
            return
        for step, recs in by_step(records).items():
            for tag, value in step_scalars(recs).items():
                self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbLog(Hook):
    """wandb.init at the start (main process), one wandb.log per job step (step = job step), wandb.finish."""

    def __init__(self, project: str | None, run_name: str | None, config: dict | None = None):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        self.wandb = wandb
        self.project, self.run_name, self.config = project, run_name, dict(config or {})
        self.run = None

    def on_train_start(self, run: RunInfo) -> None:
        if not run.is_main:
            return
        Path(run.output_dir).mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(project=self.project, name=self.run_name, config=self.config or run.config,
                                   dir=run.output_dir)

    def on_log(self, run: RunInfo, records: list[StepRecord]) -> None:
        if self.run is None:
            return
        for step, recs in by_step(records).items():
            self.wandb.log(step_scalars(recs), step=step)

    def on_train_end(self, run: RunInfo, summary: TrainSummary) -> None:
        if self.run is not None:
            self.run.summary.update({f"final_loss/{k}": v for k, v in summary.final_loss.items()})
        self.close()

    def close(self) -> None:
        if self.run is not None:
            self.run = None
            self.wandb.finish()


def hms(seconds: float) -> str:
    return str(timedelta(seconds=round(max(0.0, seconds))))


class Progress(Hook):
    """One tqdm bar for the whole job (a terminal), or a log line every `every` steps (not a terminal).

    s/step and the ETA count only this process's steps after its first WARMUP_STEPS (compile, first allocation);
    the losses shown are the per-phase means of the latest `on_log` window. `clock` is injectable for tests."""

    def __init__(self, stream: TextIO | None = None, every: int | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise GlanceError(f"logging_steps: must be a positive number of steps, got {every!r}")
        self.stream, self.every, self.clock = stream, every, clock
        self.bar = None
        self.active = False
        self.losses: dict[str, float] = {}
        self.loss_step = 0  # the last step the losses cover
        self.due: tuple | None = None  # (step, rate, eta) of a line waiting for this step's on_log

    def on_train_start(self, run: RunInfo) -> None:
        if not run.is_main:
            return
        self.active = True
        self.stream = self.stream if self.stream is not None else sys.stderr
        self.every = self.every or run.logging_steps
        self.total, self.done, self.t_warm = run.total_steps, 0, None
        if self._tty():
            from tqdm import tqdm

            self.bar = tqdm(total=run.total_steps, initial=run.start_step, file=self.stream, unit="step",
                            dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def _tty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def rate(self, step: int) -> tuple[float | None, float | None]:
        """(s/step, ETA seconds) after `step`, from the post-warm-up steps of this process; None before them."""
        if self.t_warm is None or self.done <= WARMUP_STEPS:
            return None, None
        per = (self.clock() - self.t_warm) / (self.done - WARMUP_STEPS)
        return per, per * max(0, self.total - step)

    def on_step_end(self, run: RunInfo, step: int) -> None:
        if not self.active:
            return
        self.done += 1
        if self.done == WARMUP_STEPS:
            self.t_warm = self.clock()
        per, eta = self.rate(step)
        if self.bar is not None:
            self.bar.set_postfix_str(self._text(per, eta), refresh=False)
            self.bar.update(1)
            return
        if self.due is not None:  # the previous line's on_log never came: write it with what is known
            self._emit()
        if step % self.every == 0 or step == self.total:
            self.due = (step, per, eta)
            if self.loss_step >= step:  # on_log for this step already ran
                self._emit()

    def on_log(self, run: RunInfo, records: list[StepRecord]) -> None:
        if not self.active or not records:
            return
        window: dict[str, list[float]] = {}
        for r in records:
            window.setdefault(r.phase, []).append(r.loss)
        self.losses.update({p: sum(v) / len(v) for p, v in window.items()})
        self.loss_step = max(r.step for r in records)
        if self.bar is not None:
            self.bar.set_postfix_str(self._text(*self.rate(self.loss_step)))
        elif self.due is not None and self.loss_step >= self.due[0]:
            self._emit()

    def _text(self, per: float | None, eta: float | None) -> str:
        parts = []
        if self.losses:
            parts.append("loss " + " ".join(f"{p} {v:.4f}" for p, v in self.losses.items()))
        parts.append("warming up" if per is None else f"{per:.2f} s/step, ETA {hms(eta)}")
        return ", ".join(parts)

    def _emit(self) -> None:
        step, per, eta = self.due
        self.due = None
        log.info("step %d/%d (%d%%) %s", step, self.total, 100 * step // max(1, self.total), self._text(per, eta))

    def on_train_end(self, run: RunInfo, summary: TrainSummary) -> None:
        if not self.active:
            return
        self._finish()
        per = f", {summary.seconds_train / summary.steps:.2f} s/step" if summary.steps else ""
        log.info("trained %d step(s) in %s%s; load/encode %s", summary.steps, hms(summary.seconds_train), per,
                 hms(summary.seconds_setup))

    def on_interrupt(self, run: RunInfo, step: int) -> None:
        if not self.active:
            return
        self._finish()
        log.info("interrupted after step %d/%d", step, self.total)

    def _finish(self) -> None:
        if self.due is not None:
            self._emit()
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def resolve_logging_dir(output_dir: str | os.PathLike, logging_dir: str | os.PathLike | None) -> Path:
    """logging_dir is relative to output_dir unless absolute; None means `<output_dir>/logs`."""
    d = Path(logging_dir) if logging_dir not in (None, "") else Path("logs")
    return d if d.is_absolute() else Path(output_dir) / d


def make_hooks(cfg_report_to: str | None, output_dir: str | os.PathLike, logging_dir: str | os.PathLike | None,
               tracker_project_name: str | None, tracker_run_name: str | None, config: dict,
               is_main: bool) -> list[Hook]:
    """JsonlLog + Progress always; TensorBoardLog and/or WandbLog per report_to (none | tensorboard | wandb | all).
    Every process builds the same list, so a missing package fails on all of them alike; the hooks themselves
    write on the main process only (they read run.is_main), `is_main` here only decides who logs the choice."""
    report_to = "none" if cfg_report_to is None else str(cfg_report_to).strip().lower()
    if report_to not in REPORT_TO:
        raise GlanceError(f"report_to: {cfg_report_to!r} is not one of {', '.join(REPORT_TO)}")
    hooks: list[Hook] = [JsonlLog(Path(output_dir) / JSONL_NAME), Progress()]
    if report_to in ("tensorboard", "all"):
        hooks.append(TensorBoardLog(resolve_logging_dir(output_dir, logging_dir)))
    if report_to in ("wandb", "all"):
        hooks.append(WandbLog(tracker_project_name or "glancetune", tracker_run_name, config))
    if is_main:
        log.debug("logs: %s", ", ".join(type(h).__name__ for h in hooks))
    return hooks
