"""glancetune: train a Glance Slow+Fast LoRA pair on one image and sample it in ~10 exact steps."""

__version__ = "0.1.0"

import time as _time

from .errors import GlanceError  # noqa: E402,F401

IMPORTED_AT = _time.perf_counter()  # the job's time report counts imports from here (Job.clock)
