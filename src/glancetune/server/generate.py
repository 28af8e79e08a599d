"""The Generate page's sampler: one warm `GlanceSampler` (the pipeline `glancetune generate` builds, with the run's
slow and fast adapters), kept between requests, released after `idle_s` without use or when a training job is
about to take the device. One model is resident at a time; requests are served one after the other.
"""
from __future__ import annotations

import gc
import logging
import re
import threading
import time
from pathlib import Path

from ..errors import GlanceError

log = logging.getLogger(__name__)
MAX_PROMPTS = 8
GALLERY = 60  # newest generated images listed on the Generate page
_NAME = re.compile(r"gen-(\d{8}-\d{6})-(\d+)(?:-(\d+))?\.png$")  # the request's time and number, batch index


def own_parameters(params: dict, name: str) -> dict:
    """One image's parameters: a batch stores every prompt in each image (and seed + k), so image k of a batch
    (NAME-k.png) gets its own prompt back."""
    prompt = params.get("prompt")
    if isinstance(prompt, list):
        m = _NAME.search(name)
        k = int(m.group(3)) if m and m.group(3) else 0
        params = {**params, "prompt": prompt[k] if k < len(prompt) else None}
    return params


def gallery(run_dir: Path, files: list[str]) -> list[dict]:
    """The run's generated images, newest first, with the parameters stored in each (read back from the PNG)."""
    from ..sampling.images import read_parameters

    def order(name: str) -> tuple:  # newest request first, a batch's images in their order
        m = _NAME.search(name)
        return (m.group(1), int(m.group(2)), -int(m.group(3) or 0)) if m else ("", 0, 0)

    names = sorted((f for f in files if f.startswith("generated/")), key=order, reverse=True)
    out = []
    for name in names[:GALLERY]:
        try:
            params = read_parameters(run_dir / name) or {}
        except (OSError, ValueError):
            params = {}
        out.append({"url": f"/runs/{run_dir.name}/file/{name}", "parameters": own_parameters(params, name)})
    return out


class WarmSampler:
    def __init__(self, idle_s: float = 300.0, device: str | None = None, compile_blocks: bool = False):
        """`compile_blocks`: regional compile of each loaded run's transformer (`GlanceSampler.compile`)."""
        self.idle_s, self.device, self.compile_blocks = idle_s, device, compile_blocks
        self.sampler = None
        self.spec = None
        self.key: str | None = None
        self.last = 0.0
        self.lock = threading.Lock()  # held while a generation runs
        self.busy = False

    def release(self) -> None:
        """Drop the resident pipeline (waits for a generation in progress to end)."""
        with self.lock:
            self._drop()

    def _drop(self) -> None:
        if self.sampler is None:
            return
        log.info("generate: released the pipeline of %s", self.key)
        self.sampler = self.spec = self.key = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def release_if_idle(self) -> None:
        if self.sampler is not None and not self.busy and time.monotonic() - self.last > self.idle_s:
            if self.lock.acquire(blocking=False):
                try:
                    self._drop()
                finally:
                    self.lock.release()

    def generate(self, key: str, run_output: Path, out_dir: Path, prompts: list[str], seed: int,
                 width: int | None, height: int | None, guidance: float | None) -> tuple[list[Path], dict, float]:
        """Sample `prompts` with the run's pair into `out_dir` (PNG with parameters); returns (paths, the
        parameters, seconds). The pipeline is loaded on first use of a run and kept."""
        from ..families import model_info
        from ..sampling.images import image_info, save_images
        from ..sampling.sampler import GlanceSampler, check_request, check_size, resolve_spec

        if not prompts or len(prompts) > MAX_PROMPTS:
            raise GlanceError(f"prompts: give 1 to {MAX_PROMPTS} prompts, got {len(prompts)}")
        check_request(prompts, seed, width, height, guidance)
        with self.lock:
            self.busy = True
            try:
                t0 = time.perf_counter()
                if self.key != key:
                    self._drop()
                    spec = resolve_spec(run=run_output)
                    check_size(model_info(spec.base_model), width or spec.width, height or spec.height)
                    self.sampler = GlanceSampler.from_spec(spec, device=self.device)
                    if self.compile_blocks:
                        self.sampler.compile()
                    self.spec, self.key = spec, key
                    log.info("generate: loaded %s (%s)", key, spec.base_model)
                else:
                    check_size(self.sampler.info, width or self.spec.width, height or self.spec.height)
                images = self.sampler(prompts, seed=seed, width=width, height=height, guidance=guidance)
                g = self.sampler.guidance if guidance is None else guidance
                info = image_info(self.spec, prompts, seed, g, "exact", width, height)
                n = len(list(out_dir.glob("gen-*.png"))) if out_dir.is_dir() else 0
                name = out_dir / f"gen-{time.strftime('%Y%m%d-%H%M%S')}-{n:04d}.png"
                paths = save_images(images, name, info)
                return paths, info, time.perf_counter() - t0
            finally:
                self.busy = False
                self.last = time.monotonic()
