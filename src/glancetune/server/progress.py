"""What a run is doing, read from its folder: status, step, ETA, losses, validation grids, the log's tail.

Everything here reads files the job writes (`train_log.jsonl`: one line per phase and step, validation events;
`process.log`: the command's output), so it is the same after a server restart.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..export.files import JSONL_NAME, WEIGHT_NAME, complete_checkpoints

LOSS_POINTS = 300  # per phase, at most, sent to the page
LOG_LINES = 80
STATES = ("draft", "queued", "running", "stopping", "evaluating", "done", "failed", "interrupted")
_cache: dict[Path, tuple[tuple[int, int], list[dict]]] = {}


def read_jsonl(path: Path) -> list[dict]:
    """The log's lines (a half-written last line is skipped); parsed once per change of size or time."""
    try:
        st = path.stat()
    except OSError:
        return []
    key = (st.st_size, st.st_mtime_ns)
    hit = _cache.get(path)
    if hit and hit[0] == key:
        return hit[1]
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict) and isinstance(d.get("step"), int):
            out.append(d)
    _cache[path] = (key, out)
    return out


def run_lines(output: Path) -> list[dict]:
    """The lines of a run's train_log.jsonl (in its output_dir)."""
    return read_jsonl(output / JSONL_NAME)


def finished(output: Path) -> bool:
    return all((output / role / WEIGHT_NAME).is_file() for role in ("slow", "fast"))


def ended_status(rec: dict, output: Path) -> str:
    """The status of a run whose process has ended: its exit status, or (a process of an earlier server, whose
    status nobody collected) what its folder shows."""
    rc = rec.get("returncode")
    if finished(output):  # both LoRAs written last: the job got to its end
        return "done"
    if rc in (130, 143, -2, -15) or (rc is None and complete_checkpoints(output)):
        return "interrupted"
    return "failed"


def losses(lines: list[dict]) -> dict[str, list[list[float]]]:
    """phase -> [[step, loss], ...], thinned to LOSS_POINTS by taking every k-th point."""
    by: dict[str, list[list[float]]] = {}
    for d in lines:
        if "phase" in d and d.get("loss") is not None:
            by.setdefault(d["phase"], []).append([d["step"], d["loss"]])
    return {p: v[:: max(1, -(-len(v) // LOSS_POINTS))] for p, v in by.items()}


def step_and_eta(lines: list[dict], total: int | None, running: bool) -> tuple[int, float | None]:
    """The last job step logged and, while running, the ETA from the mean seconds of the last 20 steps."""
    steps = [d for d in lines if "phase" in d]
    step = max((d["step"] for d in steps), default=0)
    if not running or not total or not steps:
        return step, None
    recent: dict[int, float] = {}
    for d in steps:
        if d["step"] > step - 20 and d.get("seconds") is not None:
            recent[d["step"]] = recent.get(d["step"], 0.0) + d["seconds"]
    per = sum(recent.values()) / len(recent) if recent else None
    return step, None if per is None else per * max(0, total - step)


def validations(lines: list[dict], files: list[str]) -> list[dict]:
    """[{step, grid}] of the validation grids on disk, oldest first."""
    out = []
    for d in lines:
        grid = d.get("grid")
        if d.get("event") == "validation" and isinstance(grid, str) and f"output/{grid}" in files:
            out.append({"step": d["step"], "grid": f"output/{grid}"})
    return out


def log_tail(path: Path, n: int = LOG_LINES) -> str:
    """The last `n` lines of the process log (progress bars' carriage returns folded)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(lines[-n:])
