"""`glance`'s defaults, from the fast-sampler table: the ladder is searched (once, cached) and the objective is
teacher distillation; edit models and `train` keep the flow loss; the paper's mode is two keys away."""
import json
from types import SimpleNamespace

import pytest

from glancetune.cli import main
from glancetune.export.files import read_record
from glancetune.ladder import LadderFile

from conftest import write_configs

pytestmark = pytest.mark.slow


def default_config(root, model, **extra):
    """write_configs pins the paper's mode for the other tests; this drops it (the defaults), with a short fine
    grid and one seed so the search is quick on a CPU."""
    cfg = write_configs(root, model, **{"steps": 4, "glance_ladder_steps": 16, "glance_teacher_seeds": 1,
                                        "cache_dir": str(root / "cache"), **extra})
    d = json.loads(cfg.read_text())
    for key in ("glance_objective", "glance_ladder"):
        if key not in extra:
            d.pop(key, None)
    cfg.write_text(json.dumps(d))
    return cfg


def test_default_glance_searches_its_ladder_once_and_distills(tiny_flux, tmp_path, capsys, caplog):
    cfg = default_config(tmp_path, tiny_flux)
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ladder: searched before training" in out and "objective distill" in out
    assert not (tmp_path / "cache" / "ladders").exists()  # the dry-run searched nothing
    with caplog.at_level("INFO", logger="glancetune"):
        assert main(["glance", "--config", str(cfg)]) == 0
    assert "ladder: searching the 10 sigmas" in caplog.text and "teacher:" in caplog.text
    files = list((tmp_path / "cache" / "ladders").glob("*.json"))
    assert len(files) == 1
    found = LadderFile.read(files[0])
    assert len(found.sigmas) == 10 and list(found.sigmas) == sorted(found.sigmas, reverse=True)
    assert found.method["fine_steps"] == 16 and found.method["seeds"] == 1
    record, _ = read_record(tmp_path / "output" / "slow")
    lad = found.ladder()
    assert record.phases == {"slow": list(lad.slow), "fast": list(lad.fast)}
    assert record.phases["slow"] != [1.0, 0.97829, 0.955738, 0.932291, 0.907897]  # not the Glance cut
    resolved = json.loads((tmp_path / "output" / "glancetune_config.json").read_text())
    assert "distill" in json.dumps(resolved)

    # a second run on the same cache plans on the file: no search, the same sigmas
    caplog.clear()
    cfg2 = default_config(tmp_path, tiny_flux, output_dir=str(tmp_path / "output2"))
    capsys.readouterr()
    assert main(["glance", "--config", str(cfg2), "--dry-run"]) == 0
    assert "searched before training" not in capsys.readouterr().out
    with caplog.at_level("INFO", logger="glancetune"):
        assert main(["glance", "--config", str(cfg2)]) == 0
    assert "ladder: searching" not in caplog.text
    assert read_record(tmp_path / "output2" / "slow")[0].phases == record.phases


def test_the_papers_mode_is_two_keys(tiny_flux, tmp_path, capsys):
    cfg = default_config(tmp_path, tiny_flux, glance_objective="flow", glance_ladder="glance", glance_ladder_steps=50)
    d = json.loads(cfg.read_text())
    del d["glance_teacher_seeds"]  # a distill / search key
    cfg.write_text(json.dumps(d))
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "searched before training" not in out and "objective distill" not in out
    from glancetune.families import model_info
    from glancetune.ladder import default_ladder

    cut = default_ladder(model_info(tiny_flux), 128, 128)  # the Glance cut of the 50-step schedule
    assert "phase slow: 5 sigmas " + ", ".join(f"{s:.6g}" for s in cut.slow) in out


def test_auto_objective_resolves_by_family_and_command():
    from glancetune.config.schema import TrainConfig
    from glancetune.families.registry import FAMILIES
    from glancetune.plan.build import resolve_objective

    cfg = TrainConfig.model_construct(glance_objective="auto")
    assert resolve_objective(cfg, FAMILIES["flux"], "glance").glance_objective == "distill"
    assert resolve_objective(cfg, FAMILIES["qwen_image"], "glance").glance_objective == "distill"
    assert resolve_objective(cfg, FAMILIES["qwen_image_edit"], "glance").glance_objective == "flow"
    assert resolve_objective(cfg, FAMILIES["flux"], "train").glance_objective == "flow"
    given = SimpleNamespace(glance_objective="flow")
    assert resolve_objective(given, FAMILIES["flux"], "glance") is given
    # distill's own defaults (the table's settings) fill only what the config leaves out
    d = resolve_objective(cfg, FAMILIES["flux"], "glance")
    assert (d.learning_rate, d.max_train_steps) == (5e-4, 200)
    own = TrainConfig.model_construct(glance_objective="auto", learning_rate=1e-3, num_train_epochs=3)
    d = resolve_objective(own, FAMILIES["flux"], "glance")
    assert (d.learning_rate, d.max_train_steps) == (1e-3, None)
    assert resolve_objective(cfg, FAMILIES["flux"], "train").learning_rate == 2e-3
