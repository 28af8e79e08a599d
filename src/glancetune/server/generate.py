"""The Generate page's sampler: one warm `GlanceSampler` (the pipeline `glancetune generate` builds, with the run's
slow and fast adapters), kept between requests, released after `idle_s` without use or when a training job is
about to take the device. One model is resident at a time; requests are served one after the other. What the
current request is doing (loading the pipeline, image k of n, saving, done) is its `Progress`, read by the page.
"""
from __future__ import annotations

import gc
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class Progress:
    """The newest request's state (idle | starting | loading | sampling | saving | done | failed) and a line
    saying it."""

    state: str = "idle"
    message: str = ""
    run: str | None = None
    image: int = 0  # 1-based, while sampling
    of: int = 0
    request: int = 0  # counts the requests, so a page tells its own from an earlier one
    seconds: float | None = None


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
        self.progress = Progress()
        self.on_progress: list = []  # called with each new Progress (tests, logs)

    def _report(self, **changes) -> None:
        p = Progress(**{**asdict(self.progress), **changes})
        self.progress = p  # one reference swapped: a reader sees the old or the new state, whole
        for fn in self.on_progress:
            fn(p)

    def status(self) -> dict:
        return asdict(self.progress)

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
                 width: int | None, height: int | None, guidance: float | None,
                 ladder_file: Path | None = None, ladder_name: str | None = None) -> tuple[list[Path], dict, float]:
        """Sample `prompts` with the run's pair into `out_dir` (PNG with parameters); returns (paths, the
        parameters, seconds). The pipeline is loaded on first use of a run and kept. `ladder_file`: sample on that
        searched ladder (as `generate --ladder-file`) instead of the run's own. Image k is its own sampler call
        (prompt k, seed + k: what the batch gives it), so the progress can say which image is being made."""
        from ..sampling.images import image_info, save_images
        from ..sampling.sampler import check_request

        if not prompts or len(prompts) > MAX_PROMPTS:
            raise GlanceError(f"prompts: give 1 to {MAX_PROMPTS} prompts, got {len(prompts)}")
        check_request(prompts, seed, width, height, guidance)
        with self.lock:
            self.busy = True
            self._report(state="starting", message="starting", run=key, image=0, of=len(prompts),
                         request=self.progress.request + 1, seconds=None)
            try:
                t0 = time.perf_counter()
                spec = self._load(key, run_output, width, height, ladder_file)
                images = []
                for k, prompt in enumerate(prompts):
                    self._report(state="sampling", message=f"image {k + 1} of {len(prompts)}", image=k + 1)
                    images += self.sampler([prompt], seed=seed + k, width=width, height=height, guidance=guidance,
                                           ladder=spec.ladder)
                self._report(state="saving", message="saving")
                g = self.sampler.guidance if guidance is None else guidance
                info = image_info(spec, prompts, seed, g, "exact", width, height)
                if ladder_name:
                    info["ladder_file"] = ladder_name
                n = len(list(out_dir.glob("gen-*.png"))) if out_dir.is_dir() else 0
                name = out_dir / f"gen-{time.strftime('%Y%m%d-%H%M%S')}-{n:04d}.png"
                paths = save_images(images, name, info)
                seconds = time.perf_counter() - t0
                self._report(state="done", message=f"done: {len(paths)} image(s) in {seconds:.1f} s",
                             seconds=round(seconds, 3))
                return paths, info, seconds
            except Exception as e:
                self._report(state="failed", message=f"failed: {e}".splitlines()[0])
                raise
            finally:
                self.busy = False
                self.last = time.monotonic()

    def _load(self, key: str, run_output: Path, width, height, ladder_file: Path | None):
        """The run's pipeline (loaded now unless resident) and the spec to sample with (its ladder: the run's own
        or `ladder_file`'s, read as `generate --ladder-file` reads it)."""
        from dataclasses import replace

        from ..families import model_info
        from ..sampling.sampler import GlanceSampler, check_size, resolve_spec

        if self.key != key:
            self._drop()
            self._report(state="loading", message=f"loading the pipeline of {key}")
            spec = resolve_spec(run=run_output)
            check_size(model_info(spec.base_model), width or spec.width, height or spec.height)
            self.sampler = GlanceSampler.from_spec(spec, device=self.device)
            if self.compile_blocks:
                self.sampler.compile()
            self.spec, self.key = spec, key
            log.info("generate: loaded %s (%s)", key, spec.base_model)
        else:
            check_size(self.sampler.info, width or self.spec.width, height or self.spec.height)
        if ladder_file is None:
            return self.spec
        return replace(self.spec, ladder=resolve_spec(run=run_output, ladder_file=ladder_file).ladder)
