"""Checkpoints: `<output_dir>/checkpoint-<step>/`, written atomically, pruned safely, resumed bit for bit.

A checkpoint holds the LoRA of each phase in the normal loadable layout (`slow/`, `fast/` or the LoRA file
itself for `train`, with the run record in the header; fp32, so resuming reads the weights back from it exactly)
and `training_state.pt`: per process and phase the optimizer, LR schedule, the phase's generator and global-RNG stream, sigma sampler, batch
sampler cursor/epoch, step and losses. `checkpoint.json` (written last) holds the step, the run identity (the
resolved config and a digest of every data file), the process layout that resuming checks, and the size and SHA-256
of every other file in the folder: a resume verifies a checkpoint whole before choosing it, and skips a damaged one
(one line naming it) for the newest whole one.

Atomicity: everything is written into `.checkpoint-<step>.tmp-<pid>`, fsynced, then renamed; a kill at any point
leaves either no checkpoint or a complete one. Pruning renames a checkpoint away before deleting it, so a
half-deleted folder never looks complete. Only the main process writes.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from ..errors import GlanceError
from ..export.files import (MANIFEST, STATE_NAME, checkpoint_problem, complete_checkpoints, contents,
                            newest_good_checkpoint)
from ..plan.build import NEUTRAL_KEYS
from .hooks import Hook
from .store import LoraStore

log = logging.getLogger(__name__)


def resume_path(setting: str | None, output_dir: Path) -> Path | None:
    """The checkpoint to resume from: "latest" (the newest whole one: each damaged newer one is skipped with one
    line naming it and what is wrong; none whole among several: one line, exit 2), "none", or a folder (checked
    whole)."""
    if setting in (None, "", "none", "None", "false"):
        return None
    if setting == "latest":
        good, skipped = newest_good_checkpoint(output_dir)
        if good is None and skipped:  # the one line names them all
            raise GlanceError(f"resume_from_checkpoint: no whole checkpoint in {output_dir} (every one is damaged: "
                              f"{'; '.join(f'{p.name}: {why}' for p, why in skipped)}); set "
                              "resume_from_checkpoint: none (or --overwrite) to start fresh")
        for p, problem in skipped:
            log.warning("resume: %s is damaged (%s); skipped", p, problem)
        return good
    p = Path(setting)
    if not p.is_absolute() and not p.exists():
        p = Path(output_dir) / setting
    problem = checkpoint_problem(p) if p.is_dir() else "not a folder"
    if problem is not None:
        raise GlanceError(f"resume_from_checkpoint: {setting} is not a whole glancetune checkpoint ({problem})")
    return p


def read_manifest(path: Path) -> dict:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GlanceError(f"resume_from_checkpoint: {path / MANIFEST}: unreadable ({e})") from None


def check_compatible(path: Path, manifest: dict, identity: dict, files: dict, layout: dict, allow) -> None:
    """One line naming every config key and data file that differs from the checkpoint's run."""
    old = manifest["identity"]
    skip = NEUTRAL_KEYS | set(allow or ()) | {"data_sha256"}
    keys = sorted(k for k in set(old) | set(identity) if k not in skip and old.get(k) != identity.get(k))
    problems = [f"config keys differ: {', '.join(keys)}"] if keys else []
    old_files = manifest.get("files", {})
    changed = sorted(f for f in set(old_files) | set(files) if old_files.get(f) != files.get(f))
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        problems.append(f"data files differ: {shown}")
    if manifest.get("layout") != layout:
        problems.append(f"process layout differs: {manifest.get('layout')} then, {layout} now")
    if problems:
        raise GlanceError(f"resume_from_checkpoint: {path} is of another run ({'; '.join(problems)}); set "
                          "resume_from_checkpoint: none (or --overwrite) to start fresh, or list harmless keys "
                          "in resume_allow_changes")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(dirpath, n), "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(p: Path) -> None:
    away = p.with_name(f".{p.name}.old-{os.getpid()}")
    os.replace(p, away)
    shutil.rmtree(away, ignore_errors=True)


class Checkpoints(Hook):
    """Writes a checkpoint every `every` steps (not at the last step: the final LoRAs are written then) and on
    SIGINT/SIGTERM; keeps the newest `limit` complete ones. `store` gathers `phase_states` and writes the LoRA
    files; `manifest`: what the checkpoint records about the run (identity, data files, process layout) for the
    resume check."""

    def __init__(self, store: LoraStore, phase_states: list, manifest: dict, every: int, limit: int | None):
        self.store, self.phase_states, self.manifest = store, list(phase_states), dict(manifest)
        self.every, self.limit = every, limit
        self.saved_step = -1

    def due(self, run, step) -> bool:
        return bool(self.every) and step % self.every == 0 and step < run.total_steps

    def wants_log(self, run, step):
        return self.due(run, step)

    def on_step_end(self, run, step):
        if self.due(run, step):
            self.save(run, step)

    def on_interrupt(self, run, step):
        if step != self.saved_step:
            self.save(run, step)

    def save(self, run, step: int) -> None:
        states = self.store.gather(self.phase_states)  # every process takes part; the main one gets all
        self.saved_step = step
        if not run.is_main:
            return
        out = Path(run.output_dir)
        final = out / f"checkpoint-{step}"
        tmp = out / f".checkpoint-{step}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.store.write(tmp, states, step)
        # the LoRA weights are kept once, in the LoRA files; the state holds everything else
        lean = [{name: {k: v for k, v in st.items() if k != "params"} for name, st in r.items()} for r in states]
        torch.save({"step": step, "ranks": lean}, tmp / STATE_NAME)
        manifest = {"step": step, **self.manifest, "contents": contents(tmp)}  # checked before a resume uses it
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        log.debug("wrote %s", final)
        if self.limit:
            for _, old in complete_checkpoints(out)[:-self.limit]:
                _remove(old)


def load_states(path: Path, rank: int) -> dict[str, dict]:
    """This process's phase states from a checkpoint: phase name -> PhaseState.state_dict()."""
    data = torch.load(path / STATE_NAME, map_location="cpu", weights_only=False)
    return data["ranks"][rank]


def restore(path: Path, rank: int, phase_states: list) -> None:
    """Continue each of this process's phases from the checkpoint's state (its LoRA weights are loaded already)."""
    saved = load_states(path, rank)
    for ph in phase_states:
        ph.load_state_dict(saved[ph.name])
