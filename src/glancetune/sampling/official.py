"""`--sampler official-compat`: the trajectory of the official Glance Qwen pipelines, with stock diffusers parts.

The official inference (CSU-JPG/Glance `pipeline/qwen.py`, `GlanceQwenSlowPipeline` then
`GlanceQwenFastPipeline`, `infer_Glance_qwen.py`) differs from sampling on the ladder:

- the transformer is conditioned on the listed timesteps stored as a **bfloat16** tensor (979.1915 -> 980,
  957.5157 -> 956, ...), cast to the latent dtype and divided by 1000, as the stock pipeline does with `t`;
- the Euler step sizes come from **another grid**: the slow pipeline sets up the model's own 50-step schedule
  (`linspace(1, 1/50, 50)`, dynamic shift at the image's token count, shift_terminal) and takes its first 5
  steps, sigma_50[i] -> sigma_50[i+1], so it stops at sigma_50[5]; the fast pipeline takes the model's own
  N-step schedule (N = `num_inference_steps` = 5 in the official script) and all of its steps, down to 0;
- true CFG with the norm rescale of the stock QwenImagePipeline in both phases (true_cfg_scale 5, negative " ").

We reproduce that with ONE pipeline and both adapters: the stock pipeline is called twice (slow adapter, then the
fast adapter from the slow call's latents), each time with an identity scheduler (so `sigmas=` is used verbatim)
whose `set_timesteps` also receives `timesteps=` — `FlowMatchEulerDiscreteScheduler` takes both and keeps them
apart; the stock pipeline only forwards `sigmas`. The slow call runs over sigma_50[0..5] and is stopped after 5
steps. The official scripts also load the model twice (fp32) and encode the prompt in each call; the images do not
depend on that. With another ladder the same rule applies: bf16 timesteps, slow grid = the first len(slow)+1
sigmas of the 50-step schedule, fast grid = the len(fast)-step schedule, both at the generation size.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

import torch

from ..schedule import LADDER_STEPS, Ladder, timestep


def conditioning_timesteps(sigmas) -> list[float]:
    """The official timesteps: float32 timestep of each sigma, stored in bfloat16 (returned as exact floats)."""
    t = torch.tensor([timestep(s) for s in sigmas], dtype=torch.float32).to(torch.bfloat16)
    return [float(x) for x in t.float().tolist()]


def step_grids(info, ladder: Ladder, width: int, height: int, ladder_steps: int = LADDER_STEPS
               ) -> tuple[list[float], list[float]]:
    """The sigmas the official pipelines take Euler steps on: slow = the first len(slow)+1 entries of the model's
    N-step schedule (N = `ladder_steps`, the run record's glance_ladder_steps; the official pipelines' 50),
    fast = the model's len(fast)-step schedule (the scheduler appends the final 0)."""
    fam = info.family
    slow = list(fam.own_schedule(info, width, height, ladder_steps)[:len(ladder.slow) + 1])
    fast = list(fam.own_schedule(info, width, height, len(ladder.fast)))
    return slow, fast


@contextmanager
def pinned_timesteps(scheduler, timesteps):
    """While active, the pipeline's `scheduler.set_timesteps(sigmas=...)` call also passes `timesteps=`."""
    scheduler.set_timesteps = functools.partial(type(scheduler).set_timesteps, scheduler, timesteps=list(timesteps))
    try:
        yield
    finally:
        del scheduler.set_timesteps


def sample(sampler, common: dict, ladder: Ladder, output_type: str, phases: str, cfg_on: dict, cfg_off: dict):
    """Two stock pipeline calls on the official grids (see the module docstring). `sampler`: a GlanceSampler."""
    pipe, n_slow = sampler.pipe, len(ladder.slow)
    width, height = common["width"], common["height"]
    slow_grid, fast_grid = step_grids(sampler.info, ladder, width, height, sampler.ladder_steps)
    slow_t = conditioning_timesteps(ladder.slow) + [timestep(slow_grid[-1])]  # the last one is never run

    def stop(p, i, t, kwargs):
        if i == n_slow - 1:
            p._interrupt = True
        return {}

    pipe.set_adapters("slow")
    with pinned_timesteps(pipe.scheduler, slow_t):
        first = pipe(sigmas=slow_grid, num_inference_steps=len(slow_grid), output_type="latent",
                     callback_on_step_end=stop, callback_on_step_end_tensor_inputs=[], **common,
                     **(cfg_on if phases in ("both", "slow") else cfg_off)).images
    pipe.set_adapters("fast")
    with pinned_timesteps(pipe.scheduler, conditioning_timesteps(ladder.fast)):
        out = pipe(sigmas=fast_grid, num_inference_steps=len(fast_grid), output_type=output_type,
                   latents=sampler.family.resume_latents(pipe, first, height, width), **common,
                   **(cfg_on if phases in ("both", "fast") else cfg_off))
    return out.images
