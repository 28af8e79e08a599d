"""The ComfyUI workflow `glancetune export` writes (export/comfy_workflow.py): API format, every node class and input
as ComfyUI's own node definitions have them (export/comfyui_nodes.json, extracted from ComfyUI's source at the
commit it names), its two ManualSigmas lists the run's ladder exactly as ComfyUI parses them (slow part, then fast
part, sharing the split sigma, ending at 0), the two LoRA copies on one base model, the run's size and guidance;
a misspelt node, a missing input or a wrongly typed link fails the check."""
import copy
import json
import re

import pytest
import torch
from conftest import run_err, run_ladder, write_configs

from glancetune.cli import main
from glancetune.export.comfy_workflow import (
    LOADERS,
    WORKFLOW_NAME,
    WorkflowPlan,
    build_workflow,
    check_workflow,
    load_schema,
    sigma_text,
)
from glancetune.ladder import LadderFile

FAMILIES = {"flux": "flux", "flux2-klein": "flux2", "qwen_image": "qwen_image"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, family in FAMILIES.items():
        root = tmp_path_factory.mktemp(f"cw-{name}")
        cfg = write_configs(root, f"tiny:{name}", resolution=32, steps=1, model_family=family)
        assert main(["glance", "--config", str(cfg)]) == 0
        assert main(["export", "--run", str(root / "output")]) == 0
        out[name] = root / "output"
    return out


def workflow(run):
    return json.loads((run / "comfyui" / WORKFLOW_NAME).read_text())


def of_class(graph, cls):
    return [(nid, n) for nid, n in graph.items() if n["class_type"] == cls]


def manual_sigmas(text):
    """ComfyUI's ManualSigmas.execute (comfy_extras/nodes_custom_sampler.py at the schema's commit), as written."""
    return torch.FloatTensor([float(i) for i in re.findall(r"[-+]?(?:\d*\.*\d+)", text)])


def sampler_sigmas(graph):
    """The two SamplerCustomAdvanced nodes in chain order (the second takes the first's latent): their sigmas."""
    samplers = dict(of_class(graph, "SamplerCustomAdvanced"))
    first = next(nid for nid, n in samplers.items() if n["inputs"]["latent_image"][0] not in samplers)
    second = next(nid for nid, n in samplers.items() if n["inputs"]["latent_image"] == [first, 0])
    return [(samplers[s], manual_sigmas(graph[samplers[s]["inputs"]["sigmas"][0]]["inputs"]["sigmas"]))
            for s in (first, second)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_export_writes_a_workflow_on_the_runs_exact_sigmas(runs, name):
    run = runs[name]
    graph = workflow(run)
    assert check_workflow(graph, load_schema()) == []
    lad = run_ladder(run)
    (slow, slow_s), (fast, fast_s) = sampler_sigmas(graph)
    assert torch.equal(slow_s, torch.tensor(lad.slow + (lad.fast[0],)))  # float32; ends at the split sigma
    assert torch.equal(fast_s, torch.tensor(lad.fast + (0.0,)))  # starts there, ends at 0
    assert graph[slow["inputs"]["noise"][0]]["class_type"] == "RandomNoise"
    assert graph[fast["inputs"]["noise"][0]]["class_type"] == "DisableNoise"
    loras = {n["inputs"]["lora_name"]: n for _, n in of_class(graph, "LoraLoaderModelOnly")}
    assert set(loras) == {"glance-slow.safetensors", "glance-fast.safetensors"}
    assert all((run / "comfyui" / f).is_file() for f in loras)
    assert loras["glance-slow.safetensors"]["inputs"]["model"] == loras["glance-fast.safetensors"]["inputs"]["model"]
    (_, latent), = [(i, n) for i, n in graph.items() if n["class_type"].startswith("Empty")]
    assert (latent["inputs"]["width"], latent["inputs"]["height"]) == (32, 32)
    decode = of_class(graph, "VAEDecode")[0][1]
    assert decode["inputs"]["samples"][0] == next(i for i, n in graph.items() if n is fast)
    assert of_class(graph, "SaveImage")


def guiders_model(graph, guider):
    """The LoRA a guider samples with (through CFGNorm where there is one)."""
    node = graph[graph[guider]["inputs"]["model"][0]]
    if node["class_type"] == "CFGNorm":
        node = graph[node["inputs"]["model"][0]]
    return node["inputs"]["lora_name"]


@pytest.mark.slow
def test_each_phase_samples_with_its_own_lora_and_the_runs_guidance(runs):
    for run in runs.values():
        graph = workflow(run)
        (slow, _), (fast, _) = sampler_sigmas(graph)
        assert guiders_model(graph, slow["inputs"]["guider"][0]) == "glance-slow.safetensors"
        assert guiders_model(graph, fast["inputs"]["guider"][0]) == "glance-fast.safetensors"
    flux = workflow(runs["flux"])  # FLUX.1: the run's guidance embedded, one pass per step
    assert [n["inputs"]["guidance"] for _, n in of_class(flux, "FluxGuidance")] == [1.0]
    assert len(of_class(flux, "BasicGuider")) == 2 and not of_class(flux, "CFGGuider")
    qwen = workflow(runs["qwen_image"])  # true CFG 5 (the official recipe) in both phases, negative " "
    assert [n["inputs"]["cfg"] for _, n in of_class(qwen, "CFGGuider")] == [5.0, 5.0]
    assert " " in [n["inputs"]["text"] for _, n in of_class(qwen, "CLIPTextEncode")]
    assert len(of_class(qwen, "CFGNorm")) == 2
    klein = workflow(runs["flux2-klein"])
    assert of_class(klein, "EmptyFlux2LatentImage") and of_class(klein, "CLIPLoader")[0][1]["inputs"]["type"] == "flux2"


def plan(kind, cfg=(4.0, 4.0)):
    return WorkflowPlan(kind, (1.0, 0.9, 0.5), (0.5, 0.2, 0.0), 1024, 768, 3.5, cfg, " ",
                        ("glance-slow.safetensors", "glance-fast.safetensors"))


@pytest.mark.parametrize("kind", list(LOADERS))
def test_every_family_workflow_matches_comfyuis_node_definitions(kind):
    graph = build_workflow(plan(kind))
    assert check_workflow(graph, load_schema()) == []
    if kind.startswith("qwen_image_edit"):
        assert of_class(graph, "LoadImage") and not of_class(graph, "CLIPTextEncode")


def test_the_check_fails_a_misspelt_node_a_missing_input_and_a_wrong_link():
    schema = load_schema()
    good = build_workflow(plan("flux"))
    nid = of_class(good, "SamplerCustomAdvanced")[0][0]

    bad = copy.deepcopy(good)
    bad[nid]["class_type"] = "SamplerCustomAdvance"
    assert any("'SamplerCustomAdvance' is not a ComfyUI node" in p for p in check_workflow(bad, schema))
    bad = copy.deepcopy(good)
    del bad[nid]["inputs"]["sigmas"]
    assert any("required input 'sigmas' missing" in p for p in check_workflow(bad, schema))
    bad = copy.deepcopy(good)
    bad[nid]["inputs"]["sigmas"] = bad[nid]["inputs"]["sampler"]  # a SAMPLER where SIGMAS go
    assert any("wants SIGMAS, gets SAMPLER" in p for p in check_workflow(bad, schema))
    bad = copy.deepcopy(good)
    bad[nid]["inputs"]["latent"] = bad[nid]["inputs"].pop("latent_image")  # a misspelt input name
    assert any("no input 'latent'" in p for p in check_workflow(bad, schema))
    bad = copy.deepcopy(good)
    of_class(bad, "DualCLIPLoader")[0][1]["inputs"]["type"] = "flux1"
    assert any("type='flux1' is not one of ComfyUI's choices" in p for p in check_workflow(bad, schema))
    bad = copy.deepcopy(good)
    bad[nid]["inputs"]["guider"] = ["99", 0]
    assert any("not a known node" in p for p in check_workflow(bad, schema))


def test_the_schema_names_its_source_and_holds_every_class_the_workflows_use():
    schema = load_schema()
    assert re.fullmatch(r"[0-9a-f]{40}", schema["comfyui"]["commit"])
    used = {n["class_type"] for kind in LOADERS for n in build_workflow(plan(kind)).values()}
    assert used <= set(schema["nodes"])
    assert "euler" in schema["nodes"]["KSamplerSelect"]["options"]["sampler_name"]


@pytest.mark.parametrize("values", [(1.0, 0.97914654, 0.5), (0.02, 1e-05, 3.0517578e-05, 0.0)])
def test_sigma_text_reads_back_as_the_same_float32_in_comfyui(values):
    text = sigma_text(values)
    assert "e" not in text  # ComfyUI's pattern has no exponent
    assert torch.equal(manual_sigmas(text), torch.tensor(values, dtype=torch.float32))


@pytest.mark.slow
def test_a_searched_ladder_file_goes_into_the_workflow(runs, tmp_path, capsys):
    run = runs["flux"]
    sig = (1.0, 0.95, 0.8, 0.6, 0.3, 0.05)
    path = LadderFile(sig, "tiny:flux", "flux", 32, 32, 1.0).write(tmp_path / "ladder.json")
    assert main(["export", "--run", str(run), "--ladder-file", str(path), "--ladder-slow-steps", "2"]) == 0
    (_, slow), (_, fast) = sampler_sigmas(workflow(run))
    assert torch.equal(slow, torch.tensor([1.0, 0.95, 0.8]))
    assert torch.equal(fast, torch.tensor([0.8, 0.6, 0.3, 0.05, 0.0]))
    before = (run / "comfyui" / WORKFLOW_NAME).read_bytes()
    err = run_err(capsys, ["export", "--run", str(run), "--ladder-file", str(tmp_path / "none.json")])
    assert "--ladder-file" in err and "file not found" in err
    err = run_err(capsys, ["export", "--run", str(run), "--ladder-slow-steps", "2"])
    assert "only with --ladder-file" in err
    assert (run / "comfyui" / WORKFLOW_NAME).read_bytes() == before  # nothing rewritten
    assert main(["export", "--run", str(run)]) == 0  # the run's own ladder again, for the tests after this one


@pytest.mark.slow
def test_a_distilled_records_cfg_phases_and_guidance_set_each_phases_cfg(runs, tmp_path):
    """A run record with `cfg_phases` "slow" (distill): cfg = the recorded guidance in the slow phase, 1 (one pass)
    in the fast one, as generate samples it; without it, the family's inference guidance in both."""
    import shutil

    from glancetune.export.comfy_workflow import plan_for_run
    from glancetune.export.files import WEIGHT_NAME, add_metadata, read_metadata

    run = tmp_path / "run"
    shutil.copytree(runs["qwen_image"], run)
    assert plan_for_run(run).cfg == (5.0, 5.0)
    header = read_metadata(run / "slow")
    record = json.loads(header["glancetune.run"])
    add_metadata(run / "slow" / WEIGHT_NAME, {"glancetune.run": json.dumps({**record, "cfg_phases": "slow",
                                                                            "guidance": 3.0})})
    plan = plan_for_run(run)
    assert plan.cfg == (3.0, 1.0) and plan.kind == "qwen_image" and plan.negative_prompt == " "
    assert [n["inputs"]["cfg"] for _, n in of_class(build_workflow(plan), "CFGGuider")] == [3.0, 1.0]


def test_export_name_prompt_caption_tiny_notice_and_file_modes(runs, capsys):
    """--name names the LoRA files and the workflow's LoRA loaders; the prompt is the run's caption unless
    --prompt; a tiny: run gets one notice; the copies' mode is what a new file gets under the umask (not 0600)."""
    import os

    run = runs["flux"]
    texts = [n["inputs"]["text"] for _, n in of_class(workflow(run), "CLIPTextEncode")]
    assert texts == ["a red gradient with speckles"]  # conftest's dataset caption, not the placeholder
    umask = os.umask(0)
    os.umask(umask)
    for f in ("glance-slow.safetensors", "glance-fast.safetensors", WORKFLOW_NAME):
        assert (run / "comfyui" / f).stat().st_mode & 0o777 == 0o666 & ~umask, f
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--name", "fox_v2.1", "--prompt", "a cat"]) == 0
    out = capsys.readouterr().out
    notices = [line for line in out.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "tiny" in notices[0] and "do not fit" in notices[0]
    graph = workflow(run)
    assert {n["inputs"]["lora_name"] for _, n in of_class(graph, "LoraLoaderModelOnly")} == {
        "fox_v2.1-slow.safetensors", "fox_v2.1-fast.safetensors"}
    assert [n["inputs"]["text"] for _, n in of_class(graph, "CLIPTextEncode")] == ["a cat"]
    for role in ("slow", "fast"):
        assert (run / "comfyui" / f"fox_v2.1-{role}.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    before = (run / "comfyui" / WORKFLOW_NAME).read_bytes()
    for bad in ("../x", "a b", ".hidden", "", "x/y"):
        err = run_err(capsys, ["export", "--run", str(run), "--name", bad])
        assert err.startswith("error: --name") and "safe file stem" in err
    assert (run / "comfyui" / WORKFLOW_NAME).read_bytes() == before  # nothing written
    assert main(["export", "--run", str(run)]) == 0  # the default names again, for the tests after this one
