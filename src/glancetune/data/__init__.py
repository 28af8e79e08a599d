"""Data: the dataloader JSON (backends.py), file discovery and captions (discovery.py), pixels (images.py),
aspect buckets and the batch sampler (buckets.py), samples and the data plan (samples.py), the validator
(validate.py)."""
from .backends import DatasetSpec, load_backends  # noqa: F401
from .buckets import Batch, BatchSampler  # noqa: F401
from .discovery import Problem, Problems, discover, pair_by_key, read_caption  # noqa: F401
from .images import Crop, load_pixels  # noqa: F401
from .samples import ConditioningImage, DataPlan, ImageRef, Sample, build_plan, load_plan  # noqa: F401
