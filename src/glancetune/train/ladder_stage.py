"""The default ladder's search, run by a `glance` job before anything else when its file is not cached yet
(plan/search.py says what is searched and where the file goes).

The teacher prompts are encoded through the text cache (the text encoders load only for what is missing and are
released), the transformer loads as the job loads it (its precision, quantization and offload), the stock pipeline
around it searches (sampling/ladder_search.py), and the ladder file is written whole into the cache. The
transformer is released after: the job then plans again, on the file, and loads as usual.
"""
from __future__ import annotations

import gc
import logging
import time

import torch

from ..ladder import LadderFile
from ..plan.build import stored_model_ref

log = logging.getLogger(__name__)


def run_ladder_search(plan, rt, load_transformer) -> None:
    """Search `plan.ladder_search` with the job's own transformer (`load_transformer(plan, rt)`) and write its
    file. Main process only; the others wait and read it."""
    req, source, fam = plan.ladder_search, plan.model, plan.family
    if rt.is_main:
        from ..engine.encode import encode_texts
        from ..sampling.ladder_search import Stepper, searched_ladder
        from .teacher import base_pipeline, on_device

        t0 = time.perf_counter()
        negative = fam.negative_prompt if fam.cfg_on(req.guidance) else None
        texts = encode_texts(source, plan.cfg, list(req.prompts) + ([negative] if negative else []), rt.device,
                             rt.dtype)
        log.info("ladder: searching the %d sigmas that best reproduce %s's own %d-step trajectory (%d prompt(s) x "
                 "%d seed(s), at most %d transformer passes%s; once, cached)", req.steps, fam.name, req.fine,
                 len(req.prompts), req.seeds, req.passes, ", x2 for true CFG" if negative else "")
        transformer = load_transformer(plan, rt)
        try:
            with base_pipeline(source, transformer, rt.device, rt.dtype) as pipe:
                neg = on_device(texts[negative], rt.device) if negative else None
                runs = [(Stepper(pipe, fam, on_device(texts[p], rt.device), neg, req.guidance,
                                 req.max_sequence_length, req.width, req.height), s)
                        for p in req.prompts for s in range(req.seeds)]
                own = fam.own_schedule(plan.info, req.width, req.height, req.fine)
                default = list(fam.own_schedule(plan.info, req.width, req.height, req.steps))
                ladder, method = searched_ladder(runs, list(own), default, req.steps, "ladder search")
        finally:
            del transformer
            gc.collect()
            if rt.device.type == "cuda":
                torch.cuda.empty_cache()
        method = {**method, "fine_steps": req.fine, "prompts": list(req.prompts), "seeds": req.seeds,
                  "seconds": round(time.perf_counter() - t0, 1), "by": "glance job (glance_ladder: search)"}
        LadderFile(tuple(ladder), stored_model_ref(plan.info.ref), fam.name, req.width, req.height, req.guidance,
                   method, req.max_sequence_length).write(req.path)
        log.info("ladder: %s (distance to the %d-step result: searched %.4g, default %.4g; %d passes, %.1fs) -> %s",
                 ", ".join(f"{s:.4f}" for s in ladder), req.fine, method["cost"]["searched"],
                 method["cost"]["default"], method["transformer_passes"], method["seconds"], req.path)
    rt.accelerator.wait_for_everyone()
