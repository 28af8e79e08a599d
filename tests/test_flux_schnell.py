"""FLUX.1 schnell: no guidance embedding, unshifted scheduler; same spine, same exactness."""
import json
import logging

import numpy as np
import pytest

from glancetune.cli import main
from glancetune.export.files import read_record
from glancetune.sampling.sampler import GlanceSampler, resolve_spec
from conftest import write_configs, PROMPT, run_ladder as ladder_of, stock_glance

pytestmark = pytest.mark.slow


def test_schnell_glance_roundtrip(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="glancetune")
    model = tmp_path / "schnell"
    assert main(["tiny", "flux-schnell", str(model)]) == 0
    cfg = write_configs(tmp_path, str(model), steps=4, **{"--flux_guidance_value": 3.0})
    assert main(["glance", "--config", str(cfg)]) == 0
    assert "flux_guidance_value ignored: this flux transformer has no guidance embedding" in caplog.text  # a notice, not silence
    run = tmp_path / "output"
    assert read_record(run / "slow")[0].guidance is None
    lad = ladder_of(run)
    lin = np.linspace(1.0, 1 / 50, 50).astype(np.float32)  # schnell's schedule is unshifted
    assert list(lad.sigmas) == [float(lin[i]) for i in (0, 2, 4, 6, 8, 10, 20, 30, 40, 49)]
    spec = resolve_spec(run=run)
    ours = GlanceSampler.from_spec(spec, device="cpu")([PROMPT], seed=1, width=128, height=128, output_type="np")[0]
    ref = stock_glance("flux", model, run, 1, 128, 128)
    assert np.abs(ours - ref).max() <= 1 / 255
