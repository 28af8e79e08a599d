"""glancetune: train a Glance Slow+Fast LoRA pair on one image and sample it in ~10 exact steps."""

__version__ = "0.1.0"

from .errors import GlanceError  # noqa: E402,F401
