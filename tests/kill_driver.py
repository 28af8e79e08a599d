"""Run the glancetune CLI and kill or signal the process at an exact point (test helper, not a test).

python kill_driver.py MODE N -- glancetune args...
  kill-step N     SIGKILL at the start of job step N (after step N-1 finished)
  kill-write N    SIGKILL while checkpoint-N is being written (files in its temp folder, not yet renamed)
  sigint N        SIGINT to itself at the start of job step N (the step finishes, then the run stops)
  sigterm N       SIGTERM likewise
  kill-replace N  SIGKILL at the Nth os.replace onto a .safetensors / .png / .jpg / .webp file: a cache entry or
                  an image fully written under its temp name, not yet renamed
"""
import os
import signal
import sys

from glancetune.train import checkpoint, loop

mode, n = sys.argv[1], int(sys.argv[2])
argv = sys.argv[sys.argv.index("--") + 1:]
sig = {"kill-step": signal.SIGKILL, "kill-write": signal.SIGKILL, "sigint": signal.SIGINT,
       "sigterm": signal.SIGTERM, "kill-replace": signal.SIGKILL}[mode]

if mode == "kill-replace":
    orig_replace = os.replace
    seen = []

    def replace(src, dst, *a, **k):
        if str(dst).endswith((".safetensors", ".png", ".jpg", ".webp")):
            seen.append(dst)
            if len(seen) == n:
                os.kill(os.getpid(), sig)
        return orig_replace(src, dst, *a, **k)

    os.replace = replace
elif mode == "kill-write":
    orig_fsync = checkpoint._fsync_tree

    def fsync_tree(root):
        if f".checkpoint-{n}.tmp" in str(root):
            os.kill(os.getpid(), sig)
        orig_fsync(root)

    checkpoint._fsync_tree = fsync_tree
else:
    orig_step = loop.Trainer.phase_step

    def phase_step(self, ph, step):
        if step == n and ph.name in ("slow", "lora"):
            os.kill(os.getpid(), sig)
        return orig_step(self, ph, step)

    loop.Trainer.phase_step = phase_step

from glancetune.cli import main  # noqa: E402

sys.exit(main(argv))
