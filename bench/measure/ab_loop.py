"""A/B of the loop's per-step host work (variant in $AB): none | norng (no per-phase RNG swap) | noadapter (no
set_adapter when unchanged) | noacc (plain torch autocast/backward instead of accelerate's) | all. Runs
bench/measure/train_step.py with the patch applied. Diagnostic only."""
import contextlib
import os
import runpy
import sys

import torch

from glancetune.train import loop

v = os.environ.get("AB", "none")
if v in ("norng", "all"):
    loop.Trainer.phase_rng = lambda self, ph: contextlib.nullcontext()
if v in ("noadapter", "all"):
    orig = loop.Trainer.phase_step

    def phase_step(self, ph, step):
        sa = self.transformer.set_adapter
        if getattr(self, "_active", None) == ph.name:
            self.transformer.set_adapter = lambda name: None
        self._active = ph.name
        try:
            return orig(self, ph, step)
        finally:
            self.transformer.set_adapter = sa
    loop.Trainer.phase_step = phase_step
if v in ("noacc", "all"):
    class Acc:
        def __init__(self, acc):
            self.acc = acc

        def autocast(self):
            return torch.autocast("cuda", dtype=torch.bfloat16)

        def accumulate(self, model):
            return contextlib.nullcontext()

        def backward(self, loss):
            loss.backward()

        def clip_grad_norm_(self, params, norm):
            return torch.nn.utils.clip_grad_norm_(params, norm)
    orig_init = loop.Trainer.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        self.acc = Acc(self.acc)
    loop.Trainer.__init__ = init
sys.argv = ["train_step.py"] + sys.argv[1:]
runpy.run_path(os.path.join(os.path.dirname(__file__), "train_step.py"), run_name="__main__")
