"""What a run's job is doing now, read from its folder: the phase label (starting, loading, searching the ladder,
caching, validating, training, checkpointing, resuming, saving, evaluating), the current loss and s/step, whether
training steps are flowing (the ETA is shown only then), the eval job's progress and the eval report's table.

The phase comes from the job's own lines in `process.log` after its last command line (`$ python -m glancetune
...`, written by jobs.py when the job starts): the plan's lines, "ladder: searching", "encoders loaded",
"teacher: ...", "validation step N", "step N/M", "resuming from ...", "trained N step(s)", plus an unfinished
`.checkpoint-N.tmp-*` folder in the output (a checkpoint being written). Nothing here is sent by the job itself.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .progress import log_tail

EVAL_ROWS = ("passes_per_image", "seconds_median", "psnr_mean", "ssim_mean", "ms_ssim_mean", "latent_mse_mean",
             "alarms")
VALIDATION_KEYS = ("validation_prompt", "validation_prompts", "user_prompt_library")
_STEP = re.compile(r"^step (\d+)/(\d+) ")
_VALIDATED = re.compile(r"^validation step (\d+):")
_EVERY = re.compile(r"^validation: .* at step 0, every (\d+) steps")
_RESUME = re.compile(r"^resuming from .* \(step (\d+) of \d+\)")
_PLAN = ("model ", "data:", "base weights:", "LoRA ", "phase ", "objective ", "caches:", "validation:")


@dataclass
class Activity:
    """The live part of a run's status line."""

    phase: str | None  # None when no job runs
    start_step: int  # the step this job started from (a resumed job: its checkpoint's step)
    flowing: bool  # training steps of this job have been logged: the ETA means something
    loss: dict[str, float]  # phase -> the latest logged loss
    per_step: float | None  # seconds per step (both phases), mean of this job's last 20 steps


def job_lines(log_text: str) -> list[str]:
    """The lines of the newest job in the process log (after its `$ ...` command line)."""
    lines = log_text.splitlines()
    starts = [k for k, line in enumerate(lines) if line.startswith("$ ")]
    return lines[starts[-1]:] if starts else lines


def _phase_of(line: str, every: int | None, total: int | None) -> str | None:
    """The phase a job is in right after writing `line` (None: the line says nothing about it)."""
    if line.startswith("$ "):
        return "starting"
    if line.startswith(_PLAN):
        return "loading"
    if line.startswith("resuming from"):
        return "resuming"
    if line.startswith("ladder: searching"):
        return "searching the ladder"
    if line.startswith("ladder: "):
        return "loading"
    if line.startswith(("encoders loaded", "teacher:")):
        return "caching"
    if line.startswith("compile:"):
        return "validating" if every else "training"
    if m := _VALIDATED.match(line):
        return "saving" if total and int(m.group(1)) >= total else "training"
    if m := _STEP.match(line):
        step = int(m.group(1))
        if total and step >= total:
            return "validating" if every else "saving"
        return "validating" if every and step % every == 0 else "training"
    if line.startswith(("trained ", "slow: ", "fast: ", "time: ")):
        return "saving"
    if line.startswith(("interrupted after", "eval: ")):
        return "checkpointing" if line.startswith("interrupted") else "evaluating"
    return None


def phase(lines: list[str], output: Path, total: int | None, status: str) -> str | None:
    """The label of what the job does now (None when no job runs)."""
    if status == "evaluating":
        return "evaluating"
    if status not in ("running", "stopping"):
        return None
    every = next((int(m.group(1)) for line in lines if (m := _EVERY.match(line))), None)
    label = "starting"
    for line in lines:
        label = _phase_of(line.strip(), every, total) or label
    if any(output.glob(".checkpoint-*.tmp-*")):
        return "checkpointing"
    return "stopping" if status == "stopping" and label == "training" else label


def activity(log_text: str, steps: list[dict], output: Path, total: int | None, status: str) -> Activity:
    """The phase, and the loss and pace of the newest job's training steps (`steps`: train_log.jsonl lines)."""
    lines = job_lines(log_text)
    start = next((int(m.group(1)) for line in lines if (m := _RESUME.match(line))), 0)
    label = phase(lines, output, total, status)
    trained = [d for d in steps if "phase" in d]
    loss = {}
    for d in trained:
        if d.get("loss") is not None:
            loss[d["phase"]] = round(float(d["loss"]), 6)
    mine = [d for d in trained if d["step"] > start] if label else []
    last = max((d["step"] for d in mine), default=start)
    seconds: dict[int, float] = {}
    for d in mine:
        if d["step"] > last - 20 and d.get("seconds") is not None:
            seconds[d["step"]] = seconds.get(d["step"], 0.0) + d["seconds"]
    flowing = label in ("training", "validating", "checkpointing", "stopping") and bool(mine)
    per = sum(seconds.values()) / len(seconds) if seconds and flowing else None
    return Activity(label, start, flowing, loss, per)


def eval_progress(log_text: str, prompts_file: str | None, seeds: int) -> dict:
    """{done, total} prompt x seed pairs of the running eval job (its `eval: NAME seed S done` lines)."""
    lines = job_lines(log_text)
    done = sum(1 for line in lines if line.startswith("eval: ") and line.rstrip().endswith(" done"))
    from ..errors import GlanceError
    from ..sampling.prompts import eval_prompts

    try:  # the prompts eval reads, as it reads them (its own set when the page sends none)
        n = len(eval_prompts(prompts_file or None))
    except GlanceError:  # an unreadable file: the eval job says so; count its own set meanwhile
        n = len(eval_prompts(None))
    return {"done": done, "total": n * max(1, seeds)}


def eval_report(eval_dir: Path, files: list[str]) -> dict | None:
    """The eval report's table (one row per sampler), its verdict and grid, from eval/eval.json; None if none."""
    try:
        report = json.loads((eval_dir / "eval.json").read_text(encoding="utf-8"))
        samplers = report["samplers"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    rows = []
    for name, row in samplers.items():
        if isinstance(row, dict):
            rows.append({"sampler": name, **{k: row.get(k) for k in EVAL_ROWS}})
    return {"rows": rows, "reference": report.get("reference"), "verdict": report.get("verdict"),
            "pairs": report.get("pairs"), "step": report.get("step"),
            "grid": "eval/grid.png" if "eval/grid.png" in files else None}


def live(run_dir: Path, output: Path, rec: dict, status: str, steps: list[dict], files: list[str]) -> dict:
    """The detail's live fields: phase, loss, s/step, ETA allowed, validation configured, eval progress and report."""
    text = log_tail(run_dir / "process.log", 400)
    total = (rec.get("plan") or {}).get("steps")
    act = activity(text, steps, output, total, status)
    out = asdict(act)
    try:
        cfg = json.loads((run_dir / "config" / "glance.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = {}
    off = cfg.get("disable_validation") or cfg.get("validation_disable")
    out["validation_set"] = bool(not off and any(cfg.get(k) for k in VALIDATION_KEYS))
    if status == "evaluating":
        out["eval_progress"] = eval_progress(text, rec.get("eval_prompts"), rec.get("eval_seeds") or 1)
    out["eval"] = eval_report(run_dir / "eval", files)
    return out


def glance_of(run_dir: Path, steps: list[dict], total: int | None, status: str) -> dict:
    """The runs list's extras: the phase label and the newest validation image (a thumbnail), if any."""
    shots = [d["images"][0] for d in steps if d.get("event") == "validation" and d.get("images")
             and isinstance(d["images"][0], str)]
    thumb = next((f"output/{g}" for g in reversed(shots) if (run_dir / "output" / g).is_file()), None)
    label = None
    if status in ("running", "stopping", "evaluating"):
        label = phase(job_lines(log_tail(run_dir / "process.log", 400)), run_dir / "output", total, status)
    return {"phase": label, "thumb": thumb}
