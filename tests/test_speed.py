"""`compile_transformer: auto` (train/speed.py): where regional compile is measured to pay, the job compiles; the
dry-run says what it will do and why. The decision is the same function for the dry-run and the job."""
import logging

import pytest
import torch

from conftest import run_err, write_configs
from glancetune.cli import main
from glancetune.errors import GlanceError
from glancetune.engine.speed import COMPILE_PAYS_AFTER, COMPILE_PAYS_AFTER_TREAD, COMPILE_PAYS_AFTER_WARM

TREAD = {"tread_config": {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": -1}]}}


def compile_line(capsys, cfg) -> str:
    capsys.readouterr()
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    return next(x for x in capsys.readouterr().out.splitlines() if x.startswith("compile: "))


def test_auto_compiles_on_cuda_when_the_steps_repay_it(tiny_flux, tmp_path, capsys, on_cuda):
    half = COMPILE_PAYS_AFTER // 2  # glance trains both phases in one process: twice the steps
    line = compile_line(capsys, write_configs(tmp_path / "a", tiny_flux, steps=half))
    assert line.startswith(f"compile: on (auto: {2 * half} steps >= {COMPILE_PAYS_AFTER}")
    line = compile_line(capsys, write_configs(tmp_path / "b", tiny_flux, steps=half - 1))
    assert line == (f"compile: off (auto: {2 * half - 2} steps in this process, under the {COMPILE_PAYS_AFTER} "
                    "that repay ~70 s of compiling)")
    line = compile_line(capsys, write_configs(tmp_path / "c", tiny_flux, steps=half, parallel_phases=True))
    assert line.startswith(f"compile: off (auto: {half} steps in this process")  # one phase per process


def test_auto_with_tread_needs_more_steps(tiny_flux, tmp_path, capsys, on_cuda):
    """TREAD's compile costs more (~125 s: routed and whole-token graphs per block) for a smaller saving."""
    half = COMPILE_PAYS_AFTER_TREAD // 2
    line = compile_line(capsys, write_configs(tmp_path / "a", tiny_flux, steps=half, **TREAD))
    assert line.startswith(f"compile: on (auto: {2 * half} steps >= {COMPILE_PAYS_AFTER_TREAD}; ~125 s of compiling")
    line = compile_line(capsys, write_configs(tmp_path / "b", tiny_flux, steps=COMPILE_PAYS_AFTER, **TREAD))
    assert line == (f"compile: off (auto: {2 * COMPILE_PAYS_AFTER} steps in this process, under the "
                    f"{COMPILE_PAYS_AFTER_TREAD} that repay ~125 s of compiling)")


def plan_key(cfg_path, device="cuda", phases=("slow", "fast")) -> str:
    from glancetune.config.schema import build_config, read_config_file
    from glancetune.plan.build import Plan

    plan = Plan.build(build_config(read_config_file(cfg_path), str(cfg_path)), "glance")
    return plan.graph_key(torch.device(device), list(phases))


def test_auto_compiles_sooner_once_the_same_graphs_were_compiled(tiny_flux, tmp_path, capsys, on_cuda):
    """A process that trained compiled marks its graphs' key next to inductor's cache; the same job again (or one
    differing only in steps, paths, learning rate) starts warm and compiles from COMPILE_PAYS_AFTER_WARM steps; a
    setting that changes the graphs (rank, TREAD, the image size) does not."""
    from glancetune.engine.speed import mark_compiled

    half = COMPILE_PAYS_AFTER_WARM // 2
    cfg = write_configs(tmp_path / "a", tiny_flux, steps=half)
    cold = f"compile: off (auto: {2 * half} steps in this process, under the {COMPILE_PAYS_AFTER} that repay ~70 s"
    assert compile_line(capsys, cfg).startswith(cold)
    mark_compiled(plan_key(cfg))
    again = write_configs(tmp_path / "b", tiny_flux, steps=half, learning_rate=1e-3)
    assert compile_line(capsys, again) == (f"compile: on (auto: {2 * half} steps >= {COMPILE_PAYS_AFTER_WARM}; "
                                           "inductor's cache is warm from an earlier run: ~30 s)")
    fewer = write_configs(tmp_path / "c", tiny_flux, steps=half - 1)
    assert compile_line(capsys, fewer) == (f"compile: off (auto: {2 * half - 2} steps in this process, under the "
                                           f"{COMPILE_PAYS_AFTER_WARM} that repay ~30 s of compiling)")
    for keys in ({"lora_rank": 8}, {"resolution": 64}, TREAD):
        other = write_configs(tmp_path / "d", tiny_flux, steps=half, **keys)
        assert plan_key(other) != plan_key(cfg), keys
        assert compile_line(capsys, other).startswith("compile: off (auto: "), keys
    assert plan_key(cfg, device="cpu") != plan_key(cfg)  # the device is part of the key
    assert plan_key(cfg, phases=("slow",)) != plan_key(cfg)


def test_auto_needs_triton_on_cuda(tiny_flux, tmp_path, capsys, on_cuda, monkeypatch):
    from glancetune.engine import speed

    monkeypatch.setattr(speed, "triton_available", lambda: False)
    line = compile_line(capsys, write_configs(tmp_path, tiny_flux, steps=COMPILE_PAYS_AFTER))
    assert line == "compile: off (auto: Triton is not installed (inductor compiles CUDA kernels with it))"


@pytest.mark.parametrize("keys, why", [
    ({"base_model_precision": "int8-quanto"}, "base_model_precision int8-quanto is not measured compiled"),
    ({"enable_group_offload": True, "gradient_checkpointing": True}, "enable_group_offload is not measured compiled"),
])
def test_auto_stays_eager_where_compile_is_not_measured(tiny_flux, tmp_path, capsys, on_cuda, keys, why):
    line = compile_line(capsys, write_configs(tmp_path, tiny_flux, steps=COMPILE_PAYS_AFTER, **keys))
    assert line == f"compile: off (auto: {why})"
    line = compile_line(capsys, write_configs(tmp_path / "forced", tiny_flux, steps=1, compile_transformer=True,
                                              **keys))
    assert line == "compile: on (compile_transformer: true)"  # an explicit setting is obeyed


def test_auto_stays_eager_for_ddp_and_fsdp(monkeypatch):
    """Multi-process runs under compile are not measured on GPUs (the job passes the runtime's layout)."""
    from glancetune.config.schema import build_config
    from glancetune.engine import speed
    from glancetune.engine.speed import compile_decision

    monkeypatch.setattr(speed, "triton_available", lambda: True)

    cfg = build_config({"data_backend_config": "d"}, "glance")
    assert compile_decision(cfg, "cuda", COMPILE_PAYS_AFTER, 1, "single")[0]
    assert compile_decision(cfg, "cuda", COMPILE_PAYS_AFTER, 1, "parallel-phases")[0]
    for layout in ("ddp", "fsdp"):
        assert compile_decision(cfg, "cuda", COMPILE_PAYS_AFTER, 1, layout) == (
            False, f"off (auto: a {layout.upper()} run is not measured compiled)")


@pytest.mark.slow
def test_auto_is_eager_on_the_cpu_and_the_job_follows_the_plan(tiny_flux, tmp_path, capsys, caplog):
    cfg = write_configs(tmp_path, tiny_flux, steps=COMPILE_PAYS_AFTER)
    assert compile_line(capsys, cfg) == "compile: off (auto: a cpu device; it is measured to pay on CUDA)"
    cfg = write_configs(tmp_path, tiny_flux, steps=1)
    with caplog.at_level(logging.INFO, logger="glancetune.train.job"):
        assert main(["glance", "--config", str(cfg)]) == 0
    assert "compile: off (auto: a cpu device; it is measured to pay on CUDA)" in caplog.messages
    assert compile_line(capsys, write_configs(tmp_path / "off", tiny_flux, steps=1, compile_transformer=False)) \
        == "compile: off (compile_transformer: false)"


def test_bad_compile_setting_is_one_line(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, steps=1, compile_transformer="sometimes")
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert err.endswith("key 'compile_transformer': expected true, false or auto (got 'sometimes')"), err


def test_a_compile_that_cannot_run_is_one_line(tiny_flux, glance_run, tmp_path, capsys, monkeypatch):
    """A compile that was asked for (compile_transformer: true, generate --compile) checks what inductor needs on
    the device before any weights load: a C++ compiler on the CPU, Triton on CUDA."""
    import torch._inductor.config as inductor_config
    from torch._inductor import cpp_builder

    from glancetune.engine import speed

    cpp_builder.cpp_compiler_search.cache_clear()
    try:
        with inductor_config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
            cfg = write_configs(tmp_path, tiny_flux, steps=1, compile_transformer=True)
            assert run_err(capsys, ["glance", "--config", str(cfg)]) == (
                "error: compile_transformer: compiling on cpu needs a C++ compiler (g++; or set CXX) and none was "
                "found, or leave compiling off")
            assert not (tmp_path / "output").exists()
            err = run_err(capsys, ["generate", "--run", str(glance_run), "--prompt", "a dog", "--compile",
                                   "--output", str(tmp_path / "x.png")])
            assert err.startswith("error: --compile: compiling on cpu needs a C++ compiler")
            assert not (tmp_path / "x.png").exists()
    finally:
        cpp_builder.cpp_compiler_search.cache_clear()  # its result is cached: searched again as torch has it
    monkeypatch.setattr(speed, "triton_available", lambda: False)
    with pytest.raises(GlanceError, match="^--compile: compiling for CUDA needs Triton"):
        speed.check_compile("cuda", "--compile")
    speed.check_compile("cpu", "--compile")  # g++ is back: no error


def report_times(caplog) -> dict[str, float]:
    line = [m for m in caplog.messages if m.startswith("time: ")][-1]
    return {name: float(v.rstrip("s")) for name, v in (p.rsplit(" ", 1) for p in line[len("time: "):].split(", "))}


@pytest.mark.slow
def test_the_final_report_times_each_part(tiny_flux, tmp_path, caplog, monkeypatch):
    """The job's last line books each part once: imports (the first job of a command-line process: from
    glancetune's import to the plan), plan, encode, load, train, save; the parts after the imports add up to at
    most the command's wall. A job run from Python (the import may be long past) or a later job has no imports."""
    import time

    from glancetune import process
    from glancetune.config.schema import build_config, read_config_file
    from glancetune.train import job

    cfg = write_configs(tmp_path, tiny_flux, steps=1)
    monkeypatch.setattr(job, "_JOBS_RUN", [])  # as in a fresh process
    with caplog.at_level(logging.INFO, logger="glancetune.train.job"):
        t0 = time.perf_counter()
        assert main(["glance", "--config", str(cfg), "--overwrite"]) == 0
        wall = time.perf_counter() - t0
        first = report_times(caplog)
        assert main(["glance", "--config", str(cfg), "--overwrite"]) == 0
        later = report_times(caplog)
        monkeypatch.setattr(job, "_JOBS_RUN", [])
        monkeypatch.setattr(process, "COMMAND_LINE", False)
        job.Job(build_config(read_config_file(cfg), str(cfg)), "glance").run(overwrite=True)
        from_python = report_times(caplog)
    names = ["plan", "encode", "load", "train", "save"]
    assert list(first) == ["imports", *names], first
    assert list(later) == names and list(from_python) == names, (later, from_python)
    assert all(v >= 0 for v in first.values()), first
    assert sum(first[n] for n in names) <= wall + 0.1, (first, wall)


@pytest.mark.slow
def test_commands_import_only_what_they_use(tmp_path):
    """`--help` and `validate-dataset` (folder or dataloader JSON) load no model, so they import neither torch nor
    diffusers (seconds each on a GPU machine): checked in a fresh interpreter."""
    import json
    import subprocess
    import sys

    from conftest import make_dataset

    data = make_dataset(tmp_path / "data")
    backend = tmp_path / "backend.json"
    backend.write_text(json.dumps([{"id": "a", "type": "local", "instance_data_dir": str(data),
                                    "caption_strategy": "textfile"}]))
    code = """if True:
        import contextlib, io, sys
        from glancetune.cli import build_parser, main
        with contextlib.redirect_stdout(io.StringIO()):
            build_parser().format_help()
            assert main(["validate-dataset", "--path", sys.argv[1]]) == 0
            assert main(["validate-dataset", "--data-backend-config", sys.argv[2]]) == 0
        print(sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules))"""
    out = subprocess.run([sys.executable, "-c", code, str(data), str(backend)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_mark_that_cannot_be_written_is_a_warning(tmp_path, monkeypatch, caplog):
    """The mark is written after training, before the LoRAs are saved: a folder that cannot take it must not cost
    the run (its parent here is a file)."""
    from glancetune.engine import speed

    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(speed, "marks_dir", lambda: tmp_path / "file" / "marks")
    with caplog.at_level(logging.WARNING, logger="glancetune.engine.speed"):
        speed.mark_compiled("abc")
    assert not speed.compiled_before("abc")
    assert any("could not mark the compiled graphs" in m for m in caplog.messages)
