"""Log hooks driven by synthetic runs: no model. JSONL, TensorBoard (read back), wandb (missing / faked), progress."""
from __future__ import annotations

import builtins
import io
import json
import logging
import sys
import types

import pytest

from glancetune.errors import GlanceError
from glancetune.train.hooks import Hooks, RunInfo, StepRecord, TrainSummary
from glancetune.export.files import JSONL_NAME
from glancetune.train.logs import (WARMUP_STEPS, JsonlLog, Progress, TensorBoardLog, WandbLog,
                                   make_hooks)


def rec(step, phase="slow", loss=None):
    return StepRecord(step=step, phase=phase, loss=loss if loss is not None else 1.0 / step,
                      lr=1e-3 * (2 if phase == "fast" else 1), sigmas=[0.25, 0.75], grad_norm=0.5 * step,
                      seconds=0.1, peak_memory_gib=None)


def run_info(tmp_path, start=0, total=12, every=4, phases=("slow", "fast"), **kw):
    return RunInfo(output_dir=str(tmp_path), phases=list(phases), total_steps=total, start_step=start,
                   logging_steps=every, **kw)


def drive(hook, run, steps, phases=("slow", "fast"), every=None, log_first=False):
    """The loop's calls for steps: on_step_end each step, on_log every `every` steps and at the last one."""
    every = every or run.logging_steps
    hook.on_train_start(run)
    window = []
    for s in steps:
        window += [rec(s, p) for p in phases]
        due = s % every == 0 or s == steps[-1]
        if due and log_first:
            hook.on_log(run, window)
        hook.on_step_end(run, s)
        if due and not log_first:
            hook.on_log(run, window)
        if due:
            window = []
    hook.on_train_end(run, TrainSummary(steps=len(steps), seconds_train=6.0, seconds_setup=3.0, final_loss={}))
    hook.close()


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_jsonl_records_and_resume_truncation(tmp_path):
    path = tmp_path / JSONL_NAME
    drive(JsonlLog(path), run_info(tmp_path), range(1, 11))
    got = lines(path)
    assert [(r["step"], r["phase"]) for r in got[:3]] == [(1, "slow"), (1, "fast"), (2, "slow")]
    assert len(got) == 20 and got[-1]["step"] == 10
    assert got[3] == {"step": 2, "phase": "fast", "loss": 0.5, "lr": 0.002, "sigmas": [0.25, 0.75],
                      "grad_norm": 1.0, "seconds": 0.1, "peak_memory_gib": None}
    with open(path, "a") as f:
        f.write('{"step": 11, "pha')  # a killed run's half-written line
    drive(JsonlLog(path), run_info(tmp_path, start=6), range(7, 13))  # resumed after the step-6 checkpoint
    got = lines(path)
    assert [r["step"] for r in got] == [s for s in range(1, 13) for _ in range(2)]  # no duplicate, no junk
    assert not (tmp_path / (JSONL_NAME + ".tmp")).exists()
    drive(JsonlLog(path), run_info(tmp_path), range(1, 3))  # a fresh run starts a fresh file
    assert [r["step"] for r in lines(path)] == [1, 1, 2, 2]


def test_jsonl_flushes_each_on_log_and_writes_nothing_off_main(tmp_path):
    path = tmp_path / JSONL_NAME
    hook, run = JsonlLog(path), run_info(tmp_path)
    hook.on_train_start(run)
    hook.on_log(run, [rec(1), rec(1, "fast", loss=float("nan"))])
    got = lines(path)  # readable before close: flushed
    assert len(got) == 2 and got[1]["loss"] is None  # NaN is not JSON: null
    hook.close()
    other = JsonlLog(tmp_path / "other" / JSONL_NAME)
    drive(other, run_info(tmp_path, is_main=False), range(1, 5))
    assert not (tmp_path / "other").exists()


def scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_and_resume_purge(tmp_path):
    logdir = tmp_path / "tb"
    drive(TensorBoardLog(logdir), run_info(tmp_path), range(1, 11))
    _, got = scalars(logdir)
    assert set(got) == {"loss/slow", "loss/fast", "lr/slow", "lr/fast", "grad_norm/slow", "grad_norm/fast",
                        "sigma/slow", "sigma/fast", "seconds_per_step"}  # no memory on CPU records
    assert [s for s, _ in got["loss/slow"]] == list(range(1, 11))
    assert got["loss/fast"][3] == (4, pytest.approx(0.25))
    assert got["sigma/slow"][0] == (1, pytest.approx(0.5)) and got["lr/fast"][0] == (1, pytest.approx(2e-3))
    assert got["seconds_per_step"][0] == (1, pytest.approx(0.2))  # both phases of the job step
    # resumed after the step-6 checkpoint with different losses: steps 7..10 of the first run are purged
    hook, run = TensorBoardLog(logdir), run_info(tmp_path, start=6, total=12)
    hook.on_train_start(run)
    hook.on_log(run, [rec(s, p, loss=100.0 + s) for s in range(7, 13) for p in ("slow", "fast")])
    hook.close()
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2
    _, got = scalars(logdir)
    assert [s for s, _ in got["loss/slow"]] == list(range(1, 13))  # once each
    assert dict(got["loss/slow"])[7] == pytest.approx(107.0) and dict(got["loss/slow"])[6] == pytest.approx(1 / 6)


def test_tensorboard_memory_and_off_main(tmp_path):
    hook, run = TensorBoardLog(tmp_path / "tb"), run_info(tmp_path)
    hook.on_train_start(run)
    r1, r2 = rec(1), rec(1, "fast")
    r1.peak_memory_gib, r2.peak_memory_gib = 3.5, 4.25
    hook.on_log(run, [r1, r2])
    hook.close()
    assert scalars(tmp_path / "tb")[1]["memory/peak_gib"] == [(1, pytest.approx(4.25))]
    drive(TensorBoardLog(tmp_path / "tb2"), run_info(tmp_path, is_main=False), range(1, 3))
    assert not (tmp_path / "tb2").exists()


def hide(monkeypatch, *names):
    """Make `import name` fail even if the package is installed."""
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.split(".")[0] in names:
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    for n in list(sys.modules):
        if n.split(".")[0] in names:
            monkeypatch.delitem(sys.modules, n)
    monkeypatch.setattr(builtins, "__import__", fake)


def test_missing_packages_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    hide(monkeypatch, "wandb", "tensorboard")
    for report_to, pip in (("wandb", "pip install wandb"), ("tensorboard", "pip install tensorboard")):
        with pytest.raises(GlanceError) as e:
            make_hooks(report_to, tmp_path, None, "p", "r", {}, True)
        msg = str(e.value)
        assert msg.startswith("report_to: ") and pip in msg and "\n" not in msg
    with pytest.raises(GlanceError, match="report_to: 'comet' is not one of none, tensorboard, wandb, all"):
        make_hooks("comet", tmp_path, None, None, None, {}, True)
    assert [type(h).__name__ for h in make_hooks("none", tmp_path, None, None, None, {}, True)] == \
        ["JsonlLog", "Progress"]


def test_make_hooks_report_to_and_logging_dir(tmp_path, monkeypatch):
    fake = fake_wandb(monkeypatch)
    hooks = make_hooks("all", tmp_path / "out", "tblogs", "proj", "name", {"a": 1}, True)
    assert [type(h).__name__ for h in hooks] == ["JsonlLog", "Progress", "TensorBoardLog", "WandbLog"]
    assert hooks[0].path == tmp_path / "out" / JSONL_NAME and hooks[2].logdir == tmp_path / "out" / "tblogs"
    assert make_hooks("tensorboard", tmp_path, tmp_path / "abs", None, None, {}, True)[2].logdir == tmp_path / "abs"
    assert make_hooks("tensorboard", tmp_path, None, None, None, {}, True)[2].logdir == tmp_path / "logs"
    assert [type(h).__name__ for h in make_hooks("wandb", tmp_path, None, None, None, {}, False)][2:] == ["WandbLog"]
    assert fake.calls == []  # nothing happens before on_train_start


def fake_wandb(monkeypatch):
    """A stand-in module recording the calls WandbLog makes (wandb itself is not installed for tests)."""
    mod = types.ModuleType("wandb")
    mod.calls = []
    handle = types.SimpleNamespace(summary={})
    mod.init = lambda **kw: mod.calls.append(("init", kw)) or handle
    mod.log = lambda data, step: mod.calls.append(("log", step, data))
    mod.finish = lambda: mod.calls.append(("finish",))
    mod.handle = handle
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return mod


def test_wandb_calls(tmp_path, monkeypatch):
    fake = fake_wandb(monkeypatch)
    hook = WandbLog("proj", "r1", {"lr": 1})
    hook.on_train_start(run_info(tmp_path))
    hook.on_log(run_info(tmp_path), [rec(1), rec(1, "fast"), rec(2), rec(2, "fast")])
    hook.on_train_end(run_info(tmp_path), TrainSummary(2, 1.0, 1.0, {"slow": 0.5}))
    hook.close()  # after on_train_end: no second finish
    assert fake.calls[0] == ("init", {"project": "proj", "name": "r1", "config": {"lr": 1}, "dir": str(tmp_path)})
    assert [c[1] for c in fake.calls[1:3]] == [1, 2] and fake.calls[3:] == [("finish",)]
    assert fake.calls[2][2]["loss/fast"] == 0.5 and fake.calls[2][2]["sigma/slow"] == 0.5
    assert fake.handle.summary == {"final_loss/slow": 0.5}
    drive(WandbLog("p", None), run_info(tmp_path, is_main=False), range(1, 3))
    assert len(fake.calls) == 4


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


def progress_run(clock, run, steps, log_first=False, warm=10.0, per=0.5, every=None):
    """Drive Progress with a clock: each of the first WARMUP_STEPS steps takes `warm` s, later ones `per` s."""
    hook = Progress(stream=io.StringIO(), clock=clock, every=every)
    hook.on_train_start(run)
    window = []
    for i, s in enumerate(steps):
        clock.t += warm if i < WARMUP_STEPS else per
        window += [rec(s, p, loss=0.1 * p.startswith("s") + 0.2 * p.startswith("f") + 0.001 * s)
                   for p in ("slow", "fast")]
        due = s % run.logging_steps == 0
        if due and log_first:
            hook.on_log(run, window)
        hook.on_step_end(run, s)
        if due and not log_first:
            hook.on_log(run, window)
        window = [] if due else window
    return hook


@pytest.mark.parametrize("log_first", [False, True])
def test_progress_lines_without_a_terminal(caplog, log_first):
    caplog.set_level(logging.INFO, logger="glancetune.train.logs")
    clock = FakeClock()
    run = RunInfo(output_dir="", phases=["slow", "fast"], total_steps=60, start_step=0, logging_steps=20)
    hook = progress_run(clock, run, range(1, 61), log_first=log_first)
    hook.on_train_end(run, TrainSummary(steps=60, seconds_train=49.0, seconds_setup=75.0, final_loss={}))
    got = [r.getMessage() for r in caplog.records]
    # s/step from the 18 steps after warm-up (0.5 s each), not the 10 s warm-up steps; ETA = 40 steps x 0.5 s
    # losses: the window means (loss = 0.1 / 0.2 + 0.001 * step: steps 1..20 average 0.1105 / 0.2105)
    assert got[0] == "step 20/60 (33%) loss slow 0.1105 fast 0.2105, 0.50 s/step, ETA 0:00:20"
    assert got[1] == "step 40/60 (66%) loss slow 0.1305 fast 0.2305, 0.50 s/step, ETA 0:00:10"
    assert got[2] == "step 60/60 (100%) loss slow 0.1505 fast 0.2505, 0.50 s/step, ETA 0:00:00"
    assert got[3] == "trained 60 step(s) in 0:00:49, 0.82 s/step; load/encode 0:01:15"
    assert len(got) == 4


def test_progress_resumed_every_n_and_warm_up(caplog):
    caplog.set_level(logging.INFO, logger="glancetune.train.logs")
    clock = FakeClock()
    run = RunInfo(output_dir="", phases=["slow", "fast"], total_steps=60, start_step=50, logging_steps=20)
    hook = progress_run(clock, run, range(51, 56), every=1, per=2.0)  # no on_log: lines still come, no loss
    hook.on_interrupt(run, 55)
    got = [r.getMessage() for r in caplog.records]
    assert got[:2] == ["step 51/60 (85%) warming up", "step 52/60 (86%) warming up"]
    assert got[2] == "step 53/60 (88%) 2.00 s/step, ETA 0:00:14"  # 7 steps left, the resume's warm-up left out
    assert got[-1] == "interrupted after step 55/60" and len(got) == 6
    with pytest.raises(GlanceError, match="logging_steps: must be a positive number of steps, got 0"):
        Progress(every=0)


def test_progress_bar_on_a_terminal_and_silent_off_main(caplog):
    caplog.set_level(logging.INFO, logger="glancetune.train.logs")
    stream, clock = Tty(), FakeClock()
    run = RunInfo(output_dir="", phases=["slow", "fast"], total_steps=12, start_step=2, logging_steps=5)
    hook = Progress(stream=stream, clock=clock)
    drive_hooks = Hooks([hook])
    drive_hooks.on_train_start(run)
    for s in range(3, 13):
        clock.t += 1.0
        drive_hooks.on_step_end(run, s)
        if s % 5 == 0:
            drive_hooks.on_log(run, [rec(s), rec(s, "fast")])
    drive_hooks.on_train_end(run, TrainSummary(steps=10, seconds_train=10.0, seconds_setup=1.0, final_loss={}))
    drive_hooks.close()
    out = stream.getvalue()
    assert "12/12" in out and "loss slow 0.1000 fast 0.1000" in out and "1.00 s/step, ETA 0:00:00" in out
    assert [r.getMessage() for r in caplog.records] == ["trained 10 step(s) in 0:00:10, 1.00 s/step; load/encode 0:00:01"]
    caplog.clear()
    quiet = Tty()
    off = Progress(stream=quiet)
    drive(off, RunInfo(output_dir="", phases=["slow"], total_steps=4, start_step=0, logging_steps=1,
                       is_main=False), range(1, 5), phases=("slow",))
    assert quiet.getvalue() == "" and caplog.records == []


@pytest.fixture
def glancetune_logger():
    logger = logging.getLogger("glancetune")
    handlers, level = logger.handlers[:], logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_setup_logging_renders_notices_on_stdout_and_warnings_on_stderr(capsys, glancetune_logger):
    from glancetune.process import setup_logging

    setup_logging()
    setup_logging()  # idempotent: one handler
    child = logging.getLogger("glancetune.data.images")
    child.info("notice: %s: alpha channel flattened onto white", "a.png")
    child.warning("disk almost full")
    child.debug("hidden")
    out, err = capsys.readouterr()
    assert out == "notice: a.png: alpha channel flattened onto white\n" and err == "warning: disk almost full\n"
    setup_logging(verbose=True)
    child.debug("shown")
    assert capsys.readouterr().out == "shown\n"
