"""Data: dataloader JSON, image/caption discovery, image loading and sizing."""
from .dataset import Sample, load_backends, load_samples  # noqa: F401
