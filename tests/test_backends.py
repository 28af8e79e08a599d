"""The dataloader JSON: the simple and local backends, every key, caption strategies, and each bad input (an
unknown key: one line with a suggestion)."""
import json
from pathlib import Path

import pytest
import torch

from conftest import make_dataset, make_image, write_configs, run_err
from glancetune.cli import main
from glancetune.data import Problems, build_plan, load_backends
from helpers import load_image
from glancetune.errors import GlanceError


def write_backend(root: Path, entries) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    p = root / "multidatabackend.json"
    p.write_text(json.dumps(entries))
    return p


def plan_of(root: Path, entries, align=16, seed=0):
    return build_plan(load_backends(write_backend(root, entries)), align, seed)


def local(data: Path, **keys) -> dict:
    return {"id": "ds", "type": "local", "instance_data_dir": str(data), "caption_strategy": "textfile", **keys}


def test_flux2_quickstart_json(tmp_path):
    """The FLUX.2 quickstart's dataloader JSON, sizes scaled down: every key is understood."""
    data = make_dataset(tmp_path / "datasets" / "my-dataset", n=2, size=(96, 64))
    entries = [
        {"id": "my-dataset", "type": "local", "crop": True, "crop_aspect": "square", "crop_style": "center",
         "resolution": 32, "minimum_image_size": 32, "maximum_image_size": 32, "resolution_type": "pixel_area",
         "cache_dir_vae": "cache/vae/flux2/my-dataset", "instance_data_dir": str(data),
         "caption_strategy": "textfile", "metadata_backend": "discovery", "repeats": 10},
        {"id": "text-embeds", "type": "local", "dataset_type": "text_embeds", "default": True,
         "cache_dir": "cache/text/flux2", "write_batch_size": 64}]
    plan = plan_of(tmp_path, entries)
    assert [s.image_path.name for s in plan.samples] == ["img0.png", "img1.png"]
    s = plan.samples[0]
    assert (s.width, s.height) == (32, 32) and s.bucket == "32x32" and s.dataset_id == "my-dataset"
    assert s.crop.resize == (48, 32) and s.crop.box == (8, 0, 40, 32)  # cover, then the centre
    assert s.cache_dir_vae == "cache/vae/flux2/my-dataset" and s.text_cache_dir == "cache/text/flux2"
    assert s.caption == "a red gradient with speckles 0" and s.caption_source == "img0.txt" and s.repeats == 10
    assert plan.groups == [[0] * 11 + [1] * 11]
    assert s.load_pixels().shape == (1, 3, 32, 32)
    assert any("maximum_image_size" in n for n in plan.notices)  # without target_downsample_size: no effect


def test_simple_backend_is_unchanged(tmp_path):
    data = make_dataset(tmp_path / "data", n=1, size=(160, 96))
    plan = plan_of(tmp_path, [{"backend": "simple", "image_dir": str(data), "resolution": 64, "shuffle": True}])
    s = plan.samples[0]
    assert (s.width, s.height) == (80, 48) and s.crop.box == (0, 0, 80, 48) and s.dataset_id == "simple-0"
    assert torch.equal(s.load_pixels(), load_image(data / "img0.png", 64, 16))


@pytest.mark.parametrize("strategy,extra,expected,source", [
    ("textfile", {}, "a fox in the snow", "a_red_fox.txt"),
    ("filename", {}, "a red fox", "filename"),
    ("instanceprompt", {"instance_prompt": "sks fox"}, "sks fox", "instance_prompt"),
    ("instance_prompt", {"instance_prompt": "sks fox"}, "sks fox", "instance_prompt"),
    ("textfile", {"instance_prompt": "sks", "prepend_instance_prompt": True}, "sks a fox in the snow",
     "a_red_fox.txt + instance_prompt"),
    ("filename", {"instance_prompt": "sks", "only_instance_prompt": True}, "sks", "instance_prompt"),
])
def test_caption_strategies(tmp_path, strategy, extra, expected, source):
    data = tmp_path / "data"
    data.mkdir()
    make_image(data / "a_red_fox.png", (32, 32))
    (data / "a_red_fox.txt").write_text("a fox\nin the snow\n")
    s = plan_of(tmp_path, [local(data, caption_strategy=strategy, **extra)]).samples[0]
    assert (s.caption, s.caption_source) == (expected, source)


def test_default_caption_strategy_is_filename_with_a_notice(tmp_path):
    data = make_dataset(tmp_path / "data")
    entry = local(data)
    del entry["caption_strategy"]
    plan = plan_of(tmp_path, [entry])
    assert plan.samples[0].caption == "img0"
    assert any("caption_strategy not set" in n and "textfile" in n for n in plan.notices)


def test_local_discovery_is_recursive_and_pairs_by_path(tmp_path):
    data = make_dataset(tmp_path / "data" / "a")
    make_dataset(tmp_path / "data" / "b")
    (tmp_path / "data" / ".hidden").mkdir()
    make_image(tmp_path / "data" / ".hidden" / "x.png")
    plan = plan_of(tmp_path, [local(tmp_path / "data")])
    assert [s.key for s in plan.samples] == ["a/img0", "b/img0"]


@pytest.mark.parametrize("rtype,res,size,expected", [
    ("pixel", 64, (128, 64), (128, 64)),  # the shorter edge is `resolution`
    ("pixel_area", 64, (128, 64), (96, 48)),  # area 64^2, sides snapped to 16
    ("area", 0.004096, (128, 64), (96, 48)),  # megapixels
    ("area", 0.25, (64, 64), (512, 512)),  # SimpleTuner's alias: 0.25 megapixels means 512^2
])
def test_resolution_types(tmp_path, rtype, res, size, expected):
    data = make_dataset(tmp_path / "data", size=size)
    s = plan_of(tmp_path, [local(data, resolution=res, resolution_type=rtype)]).samples[0]
    assert (s.width, s.height) == expected


def test_crop_aspects(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name, size in (("wide", (200, 100)), ("square", (100, 100)), ("tall", (90, 150))):
        make_image(data / f"{name}.png", size)
        (data / f"{name}.txt").write_text(name)

    def sizes(**keys):
        plan = plan_of(tmp_path, [local(data, resolution=64, crop=True, **keys)])
        return {s.key: (s.width, s.height) for s in plan.samples}

    assert sizes(crop_aspect="square") == {"wide": (64, 64), "square": (64, 64), "tall": (64, 64)}
    assert sizes(crop_aspect="preserve") == {"wide": (96, 48), "square": (64, 64), "tall": (48, 80)}
    assert sizes(crop_aspect="closest", crop_aspect_buckets=[1.0, 2.0, 0.5]) == {
        "wide": (96, 48), "square": (64, 64), "tall": (48, 96)}
    first = sizes(crop_aspect="random", crop_aspect_buckets=[{"aspect": 1.0, "weight": 0.5},
                                                             {"aspect": 2.0, "weight": 0.5}])
    assert set(first.values()) <= {(64, 64), (96, 48)}
    assert first == sizes(crop_aspect="random", crop_aspect_buckets=[{"aspect": 1.0, "weight": 0.5},
                                                                     {"aspect": 2.0, "weight": 0.5}])
    assert sizes(crop_aspect="random", crop_aspect_buckets=[2.0]) == dict.fromkeys(first, (96, 48))


def test_crop_styles_and_deterministic_random_crops(tmp_path):
    data = make_dataset(tmp_path / "data", n=4, size=(200, 100))

    def boxes(style, seed=0):
        plan = plan_of(tmp_path, [local(data, resolution=64, crop=True, crop_style=style)], seed=seed)
        return [s.crop.box for s in plan.samples]

    assert boxes("center") == [(32, 0, 96, 64)] * 4 and boxes("centre") == boxes("center")
    assert boxes("corner") == [(0, 0, 64, 64)] * 4
    rand = boxes("random")
    assert rand == boxes("random") and rand != boxes("random", seed=1)  # drawn once from the seed
    assert len(set(rand)) > 1 and all(0 <= b[0] <= 64 and b[2] - b[0] == 64 for b in rand)
    # a file's crop does not depend on the other files
    (data / "img3.png").unlink()
    (data / "img3.txt").unlink()
    assert boxes("random") == rand[:3]


def test_minimum_size_and_aspect_filters(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name, size in (("big", (128, 128)), ("small", (40, 40)), ("thin", (120, 30))):
        make_image(data / f"{name}.png", size)
        (data / f"{name}.txt").write_text(name)
    plan = plan_of(tmp_path, [local(data, resolution=64, minimum_image_size=64)])
    assert [s.key for s in plan.samples] == ["big"]  # pixel_area: sqrt(40*40) and sqrt(120*30) < 64
    assert any("2 image(s) excluded" in n and "small.png" in n for n in plan.notices)
    plan = plan_of(tmp_path, [local(data, resolution=64, resolution_type="pixel", minimum_image_size=36)])
    assert [s.key for s in plan.samples] == ["big", "small"]  # pixel: the shorter edge, thin's is 30
    plan = plan_of(tmp_path, [local(data, resolution=64, maximum_aspect_ratio=2.0, minimum_aspect_ratio=0.9)])
    assert [s.key for s in plan.samples] == ["big", "small"]
    with pytest.raises(GlanceError, match="every image of dataset 'ds' was excluded"):
        plan_of(tmp_path, [local(data, resolution=64, minimum_image_size=1000)])


def test_target_downsample_size(tmp_path):
    data = make_dataset(tmp_path / "data", n=1, size=(256, 256))
    keys = dict(resolution=32, crop=True, crop_aspect="square", crop_style="center")
    s = plan_of(tmp_path, [local(data, **keys)]).samples[0]
    assert s.crop.resize == (32, 32)
    s = plan_of(tmp_path, [local(data, maximum_image_size=128, target_downsample_size=64, **keys)]).samples[0]
    assert s.crop.resize == (64, 64) and s.crop.box == (16, 16, 48, 48)  # less context, as SimpleTuner does


def test_repeats_disabled_and_text_embeds(tmp_path):
    a = make_dataset(tmp_path / "a", n=2)
    b = make_dataset(tmp_path / "b", n=1, size=(64, 32))
    entries = [local(a, id="a", repeats=2, text_embeds="te2", resolution=128), local(b, id="b", resolution=64),
               local(b, id="off", disabled=True), local(b, id="off2", disable=True),
               {"id": "te1", "type": "local", "dataset_type": "text_embeds", "default": True, "cache_dir": "c1"},
               {"id": "te2", "type": "local", "dataset_type": "text_embeds", "cache_dir": "c2"}]
    plan = plan_of(tmp_path, entries)
    assert [s.dataset_id for s in plan.samples] == ["a", "a", "b"]
    assert plan.groups == [[0, 0, 0, 1, 1, 1], [2]] and plan.group_keys == [("a", "128x128"), ("b", "96x48")]
    assert [s.text_cache_dir for s in plan.samples] == ["c2", "c2", "c1"]


def test_neutral_simpletuner_keys_pass(tmp_path):
    data = make_dataset(tmp_path / "data")
    plan_of(tmp_path, [local(data, probability=1.0, vae_cache_clear_each_epoch=False, start_epoch=1, start_step=0,
                             skip_file_discovery="", preserve_data_backend_cache=False, hash_filenames=True,
                             disable_multiline_split=True, max_num_samples=None)])


BAD = [  # (entries given tmp data dir d, text every error must contain)
    (lambda d: [{"type": "local", "instance_data_dir": str(d)}], "key 'id' is required"),
    (lambda d: [local(d), local(d)], "duplicate id 'ds'"),
    (lambda d: [local(d, instance_data_dir="")], "key 'instance_data_dir' is required"),
    (lambda d: [{"id": "ds", "type": "local"}], "key 'instance_data_dir' is required"),
    (lambda d: [local(d.parent / "nope")], "nope: instance_data_dir does not exist"),
    (lambda d: [local(d.parent / "empty")], "empty: no image/caption pairs"),
    (lambda d: [local(d, caption_strategy="txtfile")], "unknown caption_strategy 'txtfile'; did you mean 'textfile'"),
    (lambda d: [local(d, caption_strategy="parquet")], "caption_strategy 'parquet' is not implemented yet"),
    (lambda d: [local(d, crop=True, crop_style="middle")], "unknown crop_style 'middle'"),
    (lambda d: [local(d, crop=True, crop_style="face")], "crop_style 'face' is not implemented yet"),
    (lambda d: [local(d, crop=True, crop_aspect="wide")], "unknown crop_aspect 'wide'"),
    (lambda d: [local(d, crop=True, crop_aspect="closest")], "crop_aspect 'closest' needs crop_aspect_buckets"),
    (lambda d: [local(d, crop=True, crop_aspect="random", crop_aspect_buckets=[{"aspect": 1, "weight": 0.3}])],
     "weights must add up to 1"),
    (lambda d: [local(d, resolution_type="pixels")], "unknown resolution_type 'pixels'; did you mean 'pixel'"),
    (lambda d: [local(d, caption_strategy="instanceprompt")], "caption_strategy 'instanceprompt' needs a non-empty "
                                                                "'instance_prompt'"),
    (lambda d: [local(d, prepend_instance_prompt=True)], "prepend_instance_prompt needs a non-empty"),
    (lambda d: [local(d, conditioning_data=["refs"])], "conditioning_data names unknown dataset 'refs'"),
    (lambda d: [local(d, conditioning_data="b"), local(d, id="b")], "conditioning_data 'b' has dataset_type 'image'"),
    (lambda d: [local(d), {"id": "refs", "type": "local", "dataset_type": "conditioning", "instance_data_dir": str(d),
                           "conditioning_type": "reference_strict"}], "not linked from any image dataset"),
    (lambda d: [local(d, resolution=0)], "key 'resolution' must be a number > 0, got 0"),
    (lambda d: [local(d, resolution=-512)], "key 'resolution' must be a number > 0, got -512"),
    (lambda d: [{"backend": "simple", "image_dir": str(d), "resolution": 0}], "key 'resolution' must be a positive"),
    (lambda d: [local(d, repeats=-1)], "key 'repeats' must be >= 0"),
    (lambda d: [local(d, repeats=1.5)], "key 'repeats' must be a whole number"),
    (lambda d: [local(d, crop_aspects="square")], "unknown key 'crop_aspects'; did you mean 'crop_aspect'"),
    (lambda d: [local(d, probability=0.5)], "key 'probability' is a SimpleTuner option that glancetune does not "
                                            "implement yet"),
    (lambda d: [local(d, default=True)], "key 'default' does not apply to dataset_type 'image'"),
    (lambda d: [local(d, type="aws")], "type 'aws' is not implemented yet"),
    (lambda d: [local(d, dataset_type="video")], "dataset_type 'video' is not implemented yet"),
    (lambda d: [local(d, crop="yes")], "key 'crop' must be true or false"),
    (lambda d: [local(d, text_embeds="nope")], "text_embeds 'nope' is not a text_embeds dataset"),
    (lambda d: [local(d, disabled=True)], "no enabled image dataset"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_dataloader_json(tiny_flux, tmp_path, capsys, case):
    entries, needle = BAD[case]
    d = make_dataset(tmp_path / "data")
    (tmp_path / "empty").mkdir()
    cfg = write_configs(tmp_path, tiny_flux)
    write_backend(tmp_path / "config", entries(d))
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert needle in err, err
    assert "multidatabackend.json" in err or str(tmp_path) in err
    assert not (tmp_path / "output").exists()


def test_json_syntax_error_has_line_and_column(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    (tmp_path / "config" / "multidatabackend.json").write_text('[\n  {"id": "a",\n   "type": "local" "x": 1}\n]')
    err = run_err(capsys, ["glance", "--config", str(cfg), "--dry-run"])
    assert "multidatabackend.json: JSON syntax error at line 3, column 20" in err


def test_loader_raises_on_the_first_problem_validator_collects(tmp_path):
    data = make_dataset(tmp_path / "data", n=3)
    (data / "img0.txt").write_bytes(b"")
    (data / "img2.txt").unlink()
    specs = load_backends(write_backend(tmp_path, [local(data)]))
    with pytest.raises(GlanceError, match="img2.png: no caption file img2.txt"):
        build_plan(specs, 16)
    problems = Problems(collect=True)
    plan = build_plan(specs, 16, problems=problems)
    assert [p.kind for p in problems.items] == ["missing_caption", "empty_caption"]
    assert [s.key for s in plan.samples] == ["img1"]


def test_unknown_backend_key_suggests(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    backend = tmp_path / "config" / "multidatabackend.json"
    backend.write_text(json.dumps([{"backend": "simple", "image_dir": "data", "caption_extention": ".txt"}]))
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "multidatabackend.json" in err and "did you mean 'caption_extension'" in err
