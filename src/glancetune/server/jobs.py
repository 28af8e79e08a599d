"""The job queue: each run is a separate process started with an argument list (`python -m glancetune glance
--config <run>/config/glance.json`, the CLI's own code path; never a shell), one device job at a time by default.

Processes are started in their own session, so they outlive the server (Ctrl-C at the server's terminal does not
reach them) and a restarted server finds them again from `run.json` (process id and start time). Stop sends
SIGINT: the training loop writes a checkpoint and exits 130; resume queues the same command again, which
continues from the newest checkpoint (`resume_from_checkpoint: latest`).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from . import progress
from .runs import LOG, Conflict, NotFound, RunStore

log = logging.getLogger(__name__)
TICK_S = 0.25
ACTIVE = ("running", "stopping", "evaluating")
EVAL_DIR = "eval"


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (Linux), None without them."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process, to tell a live run from a reused process id."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def alive(pid: int | None, start: str | None) -> bool:
    """The process exists, is not a zombie, and (where /proc tells) started when the run's process did."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat(pid)
    if fields is None:
        return not Path("/proc").is_dir()  # no /proc (not Linux): the signal check is all there is
    return fields[0] != "Z" and (start is None or fields[19] == start)


def child_env() -> dict[str, str]:
    """The server's environment, with this glancetune first on PYTHONPATH: the child runs the server's code."""
    import glancetune

    src = str(Path(glancetune.__file__).resolve().parent.parent)
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in parts if p != src])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Manager:
    """Starts queued runs, reaps finished ones, stops and resumes. `device_busy()` says the device is in use by
    something else (a generation); `before_start` callbacks run before a job takes the device."""

    def __init__(self, store: RunStore, max_jobs: int = 1):
        self.store, self.max_jobs = store, max_jobs
        self.procs: dict[str, subprocess.Popen] = {}
        self.lock = threading.RLock()
        self.device_busy: Callable[[], bool] = lambda: False
        self.before_start: list[Callable[[], None]] = []
        self.periodic: list[Callable[[], None]] = []  # run on every tick (e.g. release an idle pipeline)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- status -----------------------------------------------------------------------------------------------
    def status(self, rec: dict) -> str:
        state = rec.get("state")
        if state in ("draft", "queued"):
            return state
        if state == "running":
            if rec["id"] in self.procs or alive(rec.get("pid"), rec.get("pid_start")):
                if rec.get("stop_requested"):
                    return "stopping"
                return "evaluating" if rec.get("job") == "eval" else "running"
            return progress.ended_status({**rec, "returncode": None}, self.store.output(rec["id"]))
        return progress.ended_status(rec, self.store.output(rec["id"]))

    def active(self) -> list[str]:
        """Runs whose process is alive (started by this server or an earlier one)."""
        out = []
        for run_id in self.store.ids():
            try:
                rec = self.store.read(run_id)
            except NotFound:
                continue
            if rec.get("state") == "running" and self.status(rec) in ACTIVE:
                out.append(run_id)
        return out

    # --- actions ----------------------------------------------------------------------------------------------
    def enqueue(self, run_id: str) -> str:
        """Start (a draft) or resume (interrupted / failed): queue the run's command. Returns the new status."""
        with self.lock:
            rec = self.store.read(run_id)
            now = self.status(rec)
            if now not in ("draft", "interrupted", "failed"):
                raise Conflict(f"run {run_id} is {now}: only a draft, interrupted or failed run can be started")
            self.store.update(run_id, state="queued", queued=time.time(), job="train")
        self.tick()
        return self.status(self.store.read(run_id))

    def evaluate(self, run_id: str, seeds: int, prompts_file: Path | None) -> str:
        """Queue `glancetune eval` of a finished run into its eval/ folder (the report replaces an earlier one)."""
        with self.lock:
            now = self.status(self.store.read(run_id))
            if now != "done":
                raise Conflict(f"run {run_id} is {now}: only a finished run can be evaluated")
            self.store.update(run_id, state="queued", queued=time.time(), job="eval", eval_seeds=seeds,
                              eval_prompts=str(prompts_file) if prompts_file else None)
        self.tick()
        return self.status(self.store.read(run_id))

    def argv(self, run_id: str, rec: dict) -> list[str]:
        """The command of the run's job: the CLI's own train or eval command."""
        if rec.get("job") == "eval":
            argv = [sys.executable, "-m", "glancetune", "eval", "--run", str(self.store.output(run_id)), "--output",
                    str(self.store.dir(run_id) / EVAL_DIR), "--seeds", str(rec.get("eval_seeds") or 1)]
            return argv + (["--prompts", rec["eval_prompts"]] if rec.get("eval_prompts") else [])
        return [sys.executable, "-m", "glancetune", "glance", "--config", str(self.store.config_path(run_id))]

    def stop(self, run_id: str) -> str:
        """A running run gets SIGINT (it checkpoints and exits); a queued one leaves the queue."""
        with self.lock:
            rec = self.store.read(run_id)
            now = self.status(rec)
            if now == "queued":
                self.store.update(run_id, state="exited" if rec.get("started") else "draft", job="train")
            elif now in ("running", "evaluating"):
                os.kill(rec["pid"], signal.SIGINT)
                self.store.update(run_id, stop_requested=True)
            elif now != "stopping":
                raise Conflict(f"run {run_id} is {now}: only a queued or running run can be stopped")
        return self.status(self.store.read(run_id))

    # --- the loop ---------------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Reap ended processes, settle runs of an earlier server whose process ended, start queued runs."""
        with self.lock:
            for run_id, proc in list(self.procs.items()):
                rc = proc.poll()
                if rc is not None:
                    del self.procs[run_id]
                    self._ended(run_id, rc)
                    log.info("run %s ended with exit status %d", run_id, rc)
            queued = []
            for run_id in self.store.ids():
                try:
                    rec = self.store.read(run_id)
                except NotFound:  # deleted meanwhile
                    continue
                if rec.get("state") == "running" and run_id not in self.procs and \
                        not alive(rec.get("pid"), rec.get("pid_start")):
                    self._ended(run_id, None)
                elif rec.get("state") == "queued":
                    queued.append((rec.get("queued", 0), run_id))
            for _, run_id in sorted(queued):
                if len(self.active()) >= self.max_jobs or self.device_busy():
                    break
                self._start(run_id)

    def _ended(self, run_id: str, rc: int | None) -> None:
        """Record a job's end: a training job's exit status is the run's; an eval job's is kept apart (the run
        stays done)."""
        if self.store.read(run_id).get("job") == "eval":
            self.store.update(run_id, state="exited", job="train", eval_returncode=rc, ended=time.time())
        else:
            self.store.update(run_id, state="exited", returncode=rc, ended=time.time())

    def _start(self, run_id: str) -> None:
        for callback in self.before_start:
            callback()
        d = self.store.dir(run_id)
        argv = self.argv(run_id, self.store.read(run_id))
        with open(d / LOG, "ab") as out:
            out.write(f"\n$ {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(argv, cwd=d, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=child_env(), start_new_session=True)
        self.procs[run_id] = proc
        self.store.update(run_id, state="running", pid=proc.pid, pid_start=process_start_time(proc.pid),
                          started=time.time(), returncode=None, stop_requested=False)
        log.info("run %s started (process %d)", run_id, proc.pid)

    def run_forever(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.tick()
                for callback in self.periodic:
                    callback()
            except Exception:  # noqa: BLE001 - the loop must survive a run folder removed under it
                log.exception("job queue")

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="glancetune-jobs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching; running processes go on (a restarted server finds them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
