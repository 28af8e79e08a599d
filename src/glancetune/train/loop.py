"""The flow-matching LoRA loop: every job step advances each phase of this process by one optimizer step.

x_s = (1 - s) x0 + s eps, target eps - x0, MSE in fp32. Phases (slow, fast; or one `lora`) are interleaved in
one loop on one transformer that holds both adapters; only the stepping phase's adapter is active. Each phase has
its own `PhaseState`: optimizer, LR schedule, a CPU generator for its draws (sigmas, noise, guidance), its own
stream of torch's global RNG (LoRA dropout), its sigma sampler and batch sampler. Nothing is shared, so a phase
trained here equals the same phase trained alone, and the whole state round-trips through `state_dict()`
(checkpoints). Hooks (hooks.py) see every step; the loss is read from the device once per logging window.

Distributed (runtime.py): every process draws from its own generator (seed + rank); the batch sampler builds
batches of train_batch_size x processes and each process takes its slice. Gradient accumulation and
synchronisation go through `accelerator.accumulate` / `accelerator.backward`.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..data.buckets import BatchSampler
from ..data.samples import DataPlan
from ..engine.runtime import Runtime
from .hooks import Hooks, RunInfo, StepRecord, TrainSummary
from .objectives.base import Objective, flow_loss

log = logging.getLogger(__name__)
EVAL_SEED_OFFSET = 1_000_003
RANK_SEED_OFFSET = 7_919  # process r draws from seed + r * this


@dataclass
class Prepared:
    """One training sample, encoded once: x0 in transformer layout, text and image transformer kwargs."""

    x0: torch.Tensor
    text: dict
    image: dict


class SigmaSampler:
    def __init__(self, sigmas, mode: str):
        self.sigmas = torch.tensor(list(sigmas), dtype=torch.float32)
        self.mode = mode
        self.cursor = 0

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        k = len(self.sigmas)
        if self.mode == "round-robin":
            idx = (self.cursor + torch.arange(n)) % k
            self.cursor = (self.cursor + n) % k
        else:
            idx = torch.randint(k, (n,), generator=gen)
        return self.sigmas[idx]

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "mode": self.mode, "sigmas": self.sigmas.tolist()}

    def load_state_dict(self, d: dict) -> None:
        self.cursor = int(d["cursor"])


@dataclass
class PhaseState:
    """Everything one phase needs to continue: restoring it continues the phase bit for bit."""

    name: str
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_schedule: object
    generator: torch.Generator
    sampler: SigmaSampler
    batches: BatchSampler
    rng: dict  # this phase's stream of torch's global RNG: {"cpu": state, "cuda": state | None}
    step: int = 0
    losses: list = field(default_factory=list)  # per step; device tensors until read
    eval_before: float = math.nan
    eval_after: float = math.nan
    names: list[str] = field(default_factory=list)  # the parameters' names in the transformer (for saving)

    def loss_values(self) -> list[float]:
        pending = [i for i, x in enumerate(self.losses) if isinstance(x, torch.Tensor)]
        if pending:
            values = torch.stack([self.losses[i] for i in pending]).tolist()
            for i, v in zip(pending, values):
                self.losses[i] = v
        return list(self.losses)

    def state_dict(self) -> dict:
        """Plain CPU tensors: LoRA weights whole (under FSDP every process must call this: it gathers them),
        optimizer state as this process holds it (its shard under FSDP)."""
        return {"name": self.name, "step": self.step, "names": list(self.names),
                "params": [whole(p).detach().cpu().clone() for p in self.params],
                "optimizer": local(self.optimizer.state_dict()), "lr_schedule": self.lr_schedule.state_dict(),
                "generator": self.generator.get_state(), "sampler": self.sampler.state_dict(),
                "batches": self.batches.state_dict(), "rng": self.rng, "losses": self.loss_values(),
                "eval_before": self.eval_before, "eval_after": self.eval_after}

    def load_state_dict(self, d: dict) -> None:
        """`params` may be absent: a checkpoint keeps them once, in its LoRA files (LoraStore.load)."""
        with torch.no_grad():
            for p, saved in zip(self.params, d.get("params", self.params), strict=True):
                p.copy_(saved)
        self.step, self.losses, self.eval_before = int(d["step"]), list(d["losses"]), float(d["eval_before"])
        self.optimizer.load_state_dict(d["optimizer"])
        reshard_optimizer_state(self.optimizer)
        self.lr_schedule.load_state_dict(d["lr_schedule"])
        self.generator.set_state(d["generator"])
        self.sampler.load_state_dict(d["sampler"])
        self.batches.load_state_dict(d["batches"])
        self.rng = d["rng"]


def whole(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) parameter gathered whole; a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def local(obj):
    """An optimizer state dict with every sharded tensor replaced by this process's shard: CPU copies, never the
    live state (a state dict shares its tensors with the optimizer)."""
    if isinstance(obj, torch.Tensor):
        return (obj.to_local() if hasattr(obj, "to_local") else obj).detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: local(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(local(v) for v in obj)
    return obj


def reshard_optimizer_state(optimizer) -> None:
    """After load_state_dict: states of sharded parameters become shards again (saved as local tensors)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not hasattr(p, "device_mesh"):
                continue
            from torch.distributed.tensor import DTensor

            st = optimizer.state.get(p, {})
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and v.shape == p.to_local().shape:
                    st[k] = DTensor.from_local(v.to(p.device), p.device_mesh, p.placements)


class Interrupted(Exception):
    """SIGINT / SIGTERM arrived; the loop stopped after a whole step (hooks wrote a checkpoint)."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"signal {signum} at step {step}")
        self.signum, self.step = signum, step


class Trainer:
    """Runs the phases of one process. `family` supplies the transformer call; the loop never looks at the
    family's name. `model` is the transformer as prepared by the accelerator (DDP-wrapped or the same object)."""

    def __init__(self, cfg, family, transformer, samples: list[Prepared], runtime: Runtime, guidance, data: DataPlan,
                 objective: Objective):
        self.cfg, self.family, self.transformer, self.model = cfg, family, transformer, transformer
        self.samples, self.rt, self.guidance, self.data = samples, runtime, guidance, data
        self.objective = objective
        self.acc, self.device, self.dtype = runtime.accelerator, runtime.device, runtime.dtype
        # ddp: each process takes its slice of a batch of train_batch_size x processes
        data_parallel = runtime.layout in ("ddp", "fsdp")
        self.slices = runtime.world if data_parallel else 1
        self.seed = cfg.seed + (RANK_SEED_OFFSET * runtime.rank if data_parallel else 0)
        self.stop_signal: int | None = None
        self.active: str | None = None

    def prepare(self, phase_states: list[PhaseState], params_of) -> None:
        """The model for the process layout: DDP-wrapped, or sharded in place by FSDP2 (accelerate then points the
        optimizers at the sharded parameters, so each phase's parameters are looked up again: `params_of(name)`)."""
        if self.rt.layout == "ddp":
            self.model = self.acc.prepare(self.transformer)
        elif self.rt.layout == "fsdp":
            self.model = self.acc.prepare(self.transformer, *[s.optimizer for s in phase_states])[0]
            for s in phase_states:
                s.params = params_of(s.name)

    def activate(self, name: str) -> None:
        """Make `name` the only active adapter. peft's set_adapter walks every LoRA layer (~27 ms per call on
        FLUX.1, 4% of a step), so it runs only when the adapter changes."""
        if self.active != name:
            self.transformer.set_adapter(name)
            self.active = name

    # --- state ------------------------------------------------------------------------------------------------
    def new_phase(self, name: str, sigmas, params, num_steps: int, names: list[str] | None = None) -> PhaseState:
        from .optim import build_lr_scheduler, build_optimizer

        c = self.cfg
        opt = build_optimizer(params, c)
        sched = build_lr_scheduler(opt, c, num_steps)
        gen = torch.Generator("cpu").manual_seed(self.seed)
        choices = self.data.conditioning_choices() if c.conditioning_multidataset_sampling == "random" else None
        batches = BatchSampler(self.data.groups, c.train_batch_size * self.slices, c.seed, self.data.shuffle,
                               choices)
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(self.seed)
            rng = self._get_rng()
        return PhaseState(name, params, opt, sched, gen, SigmaSampler(sigmas, c.timestep_sampling), batches, rng,
                          names=list(names or []))

    def _cuda_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _get_rng(self) -> dict:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"cpu": torch.get_rng_state(), "cuda": cuda}

    @contextmanager
    def phase_rng(self, ph: PhaseState):
        """Run with the phase's own stream of torch's global RNG; the outer stream is left as it was."""
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.set_rng_state(ph.rng["cpu"])
            if ph.rng["cuda"] is not None:
                torch.cuda.set_rng_state(ph.rng["cuda"], self.device)
            yield
            ph.rng = self._get_rng()

    # --- one step -------------------------------------------------------------------------------------------
    def _batch(self, idx: list[int]):
        items = [self.samples[i] for i in idx]
        x0 = torch.cat([s.x0 for s in items], dim=0)
        return x0, self.family.collate([s.text for s in items]), self.family.collate([s.image for s in items])

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Host tensors (noise and sigmas are drawn on the CPU, so runs are device-independent) go up without
        making the CPU wait for the GPU: pinned memory and a non-blocking copy on CUDA."""
        if self.device.type == "cuda" and t.device.type == "cpu":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def draw_guidance(self, n: int, gen: torch.Generator):
        """The constant, or one value per sample uniform in the (min, max) range."""
        if not isinstance(self.guidance, tuple):
            return self.guidance
        lo, hi = self.guidance
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    def _micro_batch(self, ph: PhaseState):
        idx = ph.batches.next().indices
        n = len(idx) // self.slices
        idx = idx[self.rt.rank * n:(self.rt.rank + 1) * n] if self.slices > 1 else idx
        x0, text, image = self._batch(idx)
        x0 = x0.to(self.device)
        sig = ph.sampler.draw(len(idx), ph.generator)
        noise = self.to_device(torch.randn(x0.shape, generator=ph.generator, dtype=torch.float32))
        return x0, text, image, sig, noise, self.draw_guidance(len(idx), ph.generator)

    def phase_step(self, ph: PhaseState, job_step: int) -> StepRecord:
        c, t0 = self.cfg, time.perf_counter()
        self.activate(ph.name)
        lr = float(ph.lr_schedule.get_last_lr()[0])
        total, sigmas, grad_norm = 0.0, [], None
        with self.phase_rng(ph):
            for _ in range(c.gradient_accumulation_steps):
                with self.acc.accumulate(self.model):
                    x0, text, image, sig, noise, guidance = self._micro_batch(ph)
                    loss = self.objective.loss(self, ph, x0, text, image, sig, noise, guidance)
                    self.acc.backward(loss)  # divides by gradient_accumulation_steps
                    total = total + loss.detach() / c.gradient_accumulation_steps
                    sigmas += sig.tolist()
            if c.max_grad_norm > 0:
                grad_norm = self.acc.clip_grad_norm_(ph.params, c.max_grad_norm)
            ph.optimizer.step()
            ph.lr_schedule.step()
            ph.optimizer.zero_grad(set_to_none=True)
        ph.step += 1
        ph.losses.append(total)
        mem = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        return StepRecord(job_step, ph.name, total, lr, sigmas, grad_norm, time.perf_counter() - t0, mem)

    @torch.no_grad()
    def eval_loss(self, name: str, sigmas) -> float:
        """Loss of sample 0 at every sigma of the phase, with fixed noise: comparable before and after."""
        was_training = self.transformer.training
        self.transformer.eval()
        self.activate(name)
        gen = torch.Generator("cpu").manual_seed(self.cfg.seed + EVAL_SEED_OFFSET)
        sig = torch.tensor(list(sigmas), dtype=torch.float32)
        x0, text, image = self._batch([0] * len(sig))
        x0 = x0.to(self.device)
        noise = self.to_device(torch.randn(x0.shape, generator=gen, dtype=torch.float32))
        g = self.guidance
        g = (g[0] + g[1]) / 2 if isinstance(g, tuple) else g
        value = float(flow_loss(self, x0, text, image, sig, noise, g, model=self.transformer))
        self.transformer.train(was_training)
        return value

    # --- the loop -------------------------------------------------------------------------------------------
    @contextmanager
    def signals(self):
        """SIGINT / SIGTERM set a flag; the loop stops after the current step."""
        def handler(signum, frame):
            self.stop_signal = signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _stop_requested(self) -> bool:
        if self.rt.world == 1:
            return self.stop_signal is not None
        if self.stop_signal is not None:
            self.acc.set_trigger()
        return self.acc.check_trigger()

    def run(self, states: list[PhaseState], hooks: Hooks, run: RunInfo, seconds_setup: float) -> TrainSummary:
        """Steps run.start_step+1 .. run.total_steps; `states` already hold a resumed state where there is one."""
        for ph in states:
            if ph.step == 0 and math.isnan(ph.eval_before):
                ph.eval_before = self.eval_loss(ph.name, ph.sampler.sigmas.tolist())
        self.transformer.train()
        hooks.on_train_start(run)
        pending: list[StepRecord] = []
        t0 = time.perf_counter()
        with self.signals():
            for step in range(run.start_step + 1, run.total_steps + 1):
                pending += [self.phase_step(ph, step) for ph in states]
                if step % run.logging_steps == 0 or step == run.total_steps or hooks.wants_log(run, step):
                    self.flush(pending, hooks, run)
                hooks.on_step_end(run, step)
                if step < run.total_steps and self._stop_requested():
                    self.flush(pending, hooks, run)
                    hooks.on_interrupt(run, step)
                    raise Interrupted(self.stop_signal or signal.SIGTERM, step)
        self.flush(pending, hooks, run)
        seconds = time.perf_counter() - t0
        self.transformer.eval()
        window = max(1, run.logging_steps)
        final = {ph.name: sum(ph.loss_values()[-window:]) / len(ph.loss_values()[-window:]) for ph in states}
        return TrainSummary(run.total_steps, seconds, seconds_setup, final)

    def flush(self, pending: list[StepRecord], hooks: Hooks, run: RunInfo) -> None:
        """Read the pending losses and grad norms from the device in one transfer and hand them to the hooks."""
        if not pending:
            return
        values = torch.stack([torch.as_tensor(r.loss, dtype=torch.float32, device="cpu") if not
                              isinstance(r.loss, torch.Tensor) else r.loss.float() for r in pending]).tolist()
        norms = [r.grad_norm for r in pending]
        for r, v, g in zip(pending, values, norms):
            r.loss = v
            r.grad_norm = None if g is None else float(g)
        records = list(pending)
        pending.clear()
        if self.rt.layout == "parallel-phases":  # each process trains its own phase: log them all, in step order
            from accelerate.utils import gather_object

            records = sorted(gather_object(records), key=lambda r: (r.step, run.phases.index(r.phase)
                                                                     if r.phase in run.phases else 0))
        hooks.on_log(run, records)
