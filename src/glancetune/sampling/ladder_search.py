"""`glancetune search-ladder`: the N sigmas that best reproduce the base model's own fine-step trajectory.

The method is Optimal Stepsize (OSS, arXiv 2503.21774), written here for diffusers pipelines: the teacher is the
base model sampled on its own `fine`-step schedule (its real scheduler shift at this size, its real guidance / true
CFG), one trajectory per prompt x seed, every state kept. A dynamic program then picks the student's N steps among
the fine grid's sigmas: after k steps the student may stand at any grid point j, reached from the grid point i of
its best (k-1)-step path by one Euler step with its own velocity there; the cost of standing at j is the squared
distance to the teacher's state at j (mean over the prompts and seeds: one ladder for all of them), and the path
with the lowest cost that ends at sigma 0 after N steps wins. States and velocities are read from the stock
pipeline's scheduler steps (the guided velocity the pipeline hands its scheduler), so the search sees exactly what
`generate` computes.

The ladder file (JSON, `ladder.LadderFile`) holds the N sigmas exactly as sampled (decreasing, in (0, 1], no re-shift:
the sampler uses them verbatim), the model, size and guidance it was searched for, and how.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import torch

from ..errors import GlanceError
from ..ladder import LadderFile

log = logging.getLogger(__name__)


class Stepper:
    """The base model's stock pipeline (identity scheduler: sigmas used verbatim) with one prompt encoded once: its
    trajectory on a sigma list, and its velocity at any state. Both are read from the scheduler's own steps (the
    state it steps, the guided velocity the pipeline hands it, the result), in the layout of the pipeline's loop.
    `passes` counts transformer passes."""

    def __init__(self, pipe, family, text: dict, negative: dict | None, guidance: float | None, max_len: int,
                 width: int, height: int):
        """`text` / `negative`: the prompt and the negative prompt as `encode_prompts` gives them (the negative only
        where true CFG is on: `Family.cfg_on`)."""
        self.pipe, self.family, self.width, self.height = pipe, family, width, height
        cfg = negative is not None
        kw = family.prompt_call_kwargs(text)
        if cfg:
            kw.update(family.prompt_call_kwargs(negative, negative=True))
        call = family.pipeline_kwargs(guidance if cfg or not family.true_cfg else None, max_len)
        self.kwargs = {**{k: v for k, v in call.items() if k != "negative_prompt"}, **kw}
        self.per_call = 2 if cfg else 1
        self.passes = 0

    @classmethod
    def for_prompt(cls, pipe, family, prompt: str, guidance: float | None, max_len: int, width: int, height: int):
        """The prompt (and the family's negative prompt under true CFG) encoded by the pipeline's text encoders."""
        device = pipe._execution_device
        with torch.no_grad():
            text = family.encode_prompts(pipe, [prompt], device, max_len)
            neg = (family.encode_prompts(pipe, [family.negative_prompt], device, max_len)
                   if family.cfg_on(guidance) else None)
        return cls(pipe, family, text, neg, guidance, max_len, width, height)

    @contextmanager
    def _steps(self):
        """Every scheduler step of the calls inside: (state, velocity, next state), fp32 on the CPU."""
        sched, seen = self.pipe.scheduler, []

        def step(model_output, timestep, sample, *args, **kwargs):
            out = type(sched).step(sched, model_output, timestep, sample, *args, **kwargs)
            nxt = out[0] if isinstance(out, tuple) else out.prev_sample
            seen.append(tuple(x.detach().float().cpu().clone() for x in (sample, model_output, nxt)))
            return out

        sched.step = step
        try:
            yield seen
        finally:
            del sched.step

    def _call(self, sigmas: list[float], latents=None, seed: int = 0):
        self.passes += len(sigmas) * self.per_call
        extra = {"generator": torch.Generator("cpu").manual_seed(seed)} if latents is None else {
            "latents": self.family.loop_latents(self.pipe, latents.to(self.pipe._execution_device,
                                                                      self.pipe.transformer.dtype),
                                                self.height, self.width)}
        with torch.no_grad():
            self.pipe(sigmas=list(sigmas), num_inference_steps=len(sigmas), width=self.width, height=self.height,
                      output_type="latent", **extra, **self.kwargs)

    def trajectory(self, grid: list[float], seed: int) -> list[torch.Tensor]:
        """The states at grid[0], grid[1], ..., and at 0: the pipeline's own Euler steps from the noise of `seed`."""
        with self._steps() as seen:
            self._call(grid, seed=seed)
        return [seen[0][0]] + [nxt for _, _, nxt in seen]

    def velocity(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        """The (guided) velocity the pipeline steps with at (z, sigma)."""
        with self._steps() as seen:
            self._call([sigma], latents=z)
        return seen[0][1]


def search(steppers_and_seeds: list[tuple[Stepper, int]], grid: list[float], steps: int, progress=None):
    """(the `steps` sigmas, the searched path's cost, the teachers' trajectories) by the dynamic program of the
    module docstring over `grid` (decreasing sigmas; the final 0 implied). `progress(n)`: n more pipeline calls."""
    n = len(grid)  # grid points 0..n-1, then sigma 0 at index n
    sig = list(grid) + [0.0]
    teachers = [st.trajectory(grid, seed) for st, seed in steppers_and_seeds]  # n + 1 states each
    if progress is not None:
        progress(len(steppers_and_seeds))
    states = {0: [t[0] for t in teachers]}  # grid index -> the student's states (one per sample)
    back: list[dict[int, int]] = []
    cost: dict[int, float] = {}
    for k in range(1, steps + 1):
        nxt, src, cst = {}, {}, {}
        last = k == steps
        for i, zs in sorted(states.items()):
            if i > n - 1 - (steps - k):  # leave a grid point for each step still to come
                continue
            vs = [st.velocity(z, sig[i]) for (st, _), z in zip(steppers_and_seeds, zs)]
            if progress is not None:
                progress(len(zs))
            for j in ([n] if last else range(i + 1, n)):
                zj = [z + (sig[j] - sig[i]) * v for z, v in zip(zs, vs)]
                c = sum(float(torch.mean((a - t[j]) ** 2)) for a, t in zip(zj, teachers)) / len(zj)
                if j not in cst or c < cst[j]:
                    nxt[j], src[j], cst[j] = zj, i, c
        states, cost = nxt, cst
        back.append(src)
    path, j = [], n
    for src in reversed(back):
        j = src[j]
        path.append(j)
    return [sig[i] for i in reversed(path)], cost[n], teachers


def default_cost(steppers_and_seeds, teachers, schedule: list[float]) -> float:
    """The squared distance to the teacher's end state of plain Euler on `schedule` (the default N steps)."""
    total = 0.0
    for (st, seed), t in zip(steppers_and_seeds, teachers):
        total += float(torch.mean((st.trajectory(schedule, seed)[-1] - t[-1]) ** 2))
    return total / len(teachers)


def run_search(model: str, steps: int, width: int, height: int, guidance: float | None, prompts: list[str],
               seeds: int, fine: int, device: str | None, max_len: int | None = None) -> LadderFile:
    """`max_len`: the prompts' text length (default: the family's); a model is a different teacher at another
    length (text tokens are not masked for every family), so search with the length you sample with."""
    from ..engine.runtime import compute_dtype, configure_backends, select
    from ..families import model_info
    from ..schedule import identity_scheduler_config

    info = model_info(model)
    fam = info.family
    if fam.needs_control_image:
        raise GlanceError(f"search-ladder: not built for edit models ({fam.name}) yet")
    from .sampler import check_size

    check_size(info, width, height)  # before any weights load
    dev, mp = select(device)
    configure_backends(dev)
    t0 = time.perf_counter()
    pipe = fam.load_pipeline(info.path, compute_dtype(mp))
    pipe.to(dev)
    own = fam.own_schedule(info, width, height, fine)
    default = list(fam.own_schedule(info, width, height, steps))
    pipe.scheduler = type(pipe.scheduler).from_config(identity_scheduler_config(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    g = fam.inference_guidance(fam.default_guidance) if guidance is None else guidance
    max_len = max_len or fam.default_max_sequence_length
    runs = [(Stepper.for_prompt(pipe, fam, p, g, max_len, width, height), s) for p in prompts for s in range(seeds)]
    ladder, method = searched_ladder(runs, list(own), default, steps, "search-ladder")
    method = {**method, "fine_steps": fine, "prompts": prompts, "seeds": seeds,
              "seconds": round(time.perf_counter() - t0, 1)}
    return LadderFile(tuple(ladder), model, fam.name, width, height, g, method, max_len)


def searched_ladder(runs, grid: list[float], default: list[float], steps: int, desc: str) -> tuple[list[float], dict]:
    """(the `steps` searched sigmas, how: method, passes, costs against the `default` schedule) over `runs`
    ((Stepper, seed) pairs) and the fine `grid`, with a progress bar."""
    from tqdm import tqdm

    total = len(runs) * (1 + len(grid) * (steps - 1) + 1)  # pipeline calls: trajectories + velocity reads (at most)
    with tqdm(total=total, desc=desc, unit="call", leave=False, disable=None) as bar:  # a terminal's only
        ladder, cost, teachers = search(runs, list(grid), steps, progress=bar.update)
    base = default_cost(runs, teachers, default)
    return ladder, {"how": "optimal-stepsize dynamic program over the base model's own trajectory (arXiv "
                           "2503.21774)", "transformer_passes": sum(st.passes for st, _ in runs),
                    "cost": {"searched": cost, "default": base}, "default_sigmas": list(default)}
