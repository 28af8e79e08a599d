"""glancetune: train a Glance Slow+Fast LoRA pair on one image and sample it in ~10 exact steps."""

__version__ = "0.1.0"

import logging as _logging
import time as _time

from .errors import GlanceError  # noqa: E402,F401

# torchao logs a warning when diffusers imports it on a torch it has no compiled kernels for (pure Python then):
# nothing a user can act on, and printed before any glancetune code runs
_logging.getLogger("torchao").setLevel(_logging.ERROR)

IMPORTED_AT = _time.perf_counter()  # the job's time report counts imports from here (Job.clock)
