"""Aspect buckets and the batch sampler; conditioning pairs; a real multi-aspect Glance run on tiny:flux; the sizing
notices (upscaled images, extreme aspect ratios, a resolution that is not a multiple of the alignment)."""
import json
import logging
from collections import Counter
import pytest
import torch

from conftest import make_dataset, make_image, write_configs
from glancetune.cli import main
from glancetune.data import BatchSampler, build_plan, load_backends, load_plan
from glancetune.errors import GlanceError
from helpers import backend, make_dir, problems_of, validate
from test_backends import local, plan_of, write_backend


def test_batches_never_mix_buckets_and_cover_each_epoch():
    groups = [[0, 1, 2, 3, 4, 4], [5, 6, 7]]  # bucket A (sample 4 with repeats 1) and bucket B
    s = BatchSampler(groups, 3, seed=5)
    assert len(s) == 3
    for epoch in range(4):
        batches = [s.next() for _ in range(len(s))]
        assert s.epoch == epoch
        for b in batches:
            assert len(b.indices) == 3 and (set(b.indices) <= set(groups[0]) or set(b.indices) <= set(groups[1]))
        assert Counter(i for b in batches for i in b.indices) == Counter(groups[0] + groups[1])
    a, b = BatchSampler(groups, 3, seed=5), BatchSampler(groups, 3, seed=6)
    first = [a.next().indices for _ in range(9)]
    assert first == [BatchSampler(groups, 3, seed=5).next().indices] + first[1:]  # same seed, same stream
    assert first != [b.next().indices for _ in range(9)]


def test_partial_batches_fill_from_their_own_bucket_and_no_shuffle_keeps_order():
    s = BatchSampler([[0, 1, 2], [3]], 2, seed=0, shuffle=False)
    assert [s.next().indices for _ in range(4)] == [[0, 1], [2, 0], [3, 3], [0, 1]]
    one = BatchSampler([[0]], 4, seed=0)
    assert all(one.next().indices == [0, 0, 0, 0] for _ in range(5))


def test_sampler_state_resumes_exactly():
    groups = [[0, 1, 2, 3, 4], [5, 6]]
    a = BatchSampler(groups, 2, seed=1)
    for _ in range(7):
        a.next()
    state = json.loads(json.dumps(a.state_dict()))  # plain data
    b = BatchSampler(groups, 2, seed=1)
    b.load_state_dict(state)
    assert [a.next().indices for _ in range(10)] == [b.next().indices for _ in range(10)]
    with pytest.raises(GlanceError, match="resume: the batch sampler was saved with groups"):
        BatchSampler([[0, 1]], 2, seed=1).load_state_dict(state)


def test_phase_state_carries_the_sampler():
    from types import SimpleNamespace

    from glancetune.train.loop import Trainer

    cfg = SimpleNamespace(learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=0.0,
                          adam_epsilon=1e-8, lr_scheduler="constant", lr_warmup_steps=0, seed=3,
                          timestep_sampling="uniform", train_batch_size=2, conditioning_multidataset_sampling="combined",
                          optimizer="adamw", lr_num_cycles=None, lr_power=1.0)
    rt = SimpleNamespace(accelerator=None, device=torch.device("cpu"), dtype=torch.float32, layout="single", rank=0,
                         world=1)
    plan = SimpleNamespace(groups=[[0, 1], [2]], shuffle=True)
    trainer = Trainer(cfg, None, None, [None] * 3, rt, 1.0, plan, None)
    params = [torch.nn.Parameter(torch.zeros(2))]
    state = trainer.new_phase("lora", (1.0, 0.5), params, 10)
    for _ in range(3):
        state.batches.next()
    saved = state.state_dict()
    assert saved["batches"]["cursor"] == 1 and saved["batches"]["epoch"] == 1
    again = trainer.new_phase("lora", (1.0, 0.5), params, 10)
    again.load_state_dict(saved)
    assert again.batches.next().indices == state.batches.next().indices


def test_reference_strict_shares_the_crop(tmp_path):
    edits, refs = tmp_path / "edits", tmp_path / "refs"
    make_dataset(edits, n=2, size=(160, 96))
    refs.mkdir()
    for i in range(2):  # the same picture at twice the resolution, another format
        from PIL import Image

        Image.open(edits / f"img{i}.png").resize((320, 192), Image.Resampling.LANCZOS).save(refs / f"img{i}.webp",
                                                                                         lossless=True)
    entries = [local(edits, resolution=64, crop=True, crop_style="random", conditioning_data="refs"),
               {"id": "refs", "type": "local", "dataset_type": "conditioning", "instance_data_dir": str(refs),
                "conditioning_type": "reference_strict", "resolution": 1024, "source_dataset_id": "ds"}]
    plan = plan_of(tmp_path, entries)
    for s in plan.samples:
        (c,) = s.conditioning
        assert c.conditioning_type == "reference_strict" and c.image_path.suffix == ".webp" and c.key == s.key
        assert c.crop.resize == s.crop.resize and c.crop.box == s.crop.box and c.crop.source == (320, 192)
        a, b = s.load_pixels(), c.load_pixels()
        assert a.shape == b.shape == (1, 3, 64, 64)
        assert (a - b).abs().mean() < 0.05  # the same content: aligned 1:1


def test_reference_loose_is_sized_on_its_own_and_keys_the_bucket(tmp_path):
    edits, refs = make_dataset(tmp_path / "edits", n=2, size=(128, 128)), tmp_path / "refs"
    refs.mkdir()
    make_image(refs / "img0.png", (200, 100))
    make_image(refs / "img1.jpg", (128, 128))
    entries = [local(edits, resolution=64, conditioning_data=["refs"]),
               {"id": "refs", "type": "local", "dataset_type": "conditioning", "instance_data_dir": str(refs),
                "conditioning_type": "reference_loose", "resolution": 64}]
    plan = plan_of(tmp_path, entries)
    assert [(c.width, c.height) for s in plan.samples for c in s.conditioning] == [(96, 48), (64, 64)]
    assert [s.bucket for s in plan.samples] == ["64x64|96x48", "64x64|64x64"]
    assert len(plan.groups) == 2  # different conditioning sizes never share a batch


def test_conditioning_errors_name_the_file(tmp_path):
    edits, refs = make_dataset(tmp_path / "edits", n=2), tmp_path / "refs"
    refs.mkdir()
    make_image(refs / "img0.png", (128, 128))
    ref = {"id": "refs", "type": "local", "dataset_type": "conditioning", "instance_data_dir": str(refs),
           "conditioning_type": "reference_strict"}
    with pytest.raises(GlanceError, match=r"img1.png: no matching conditioning \(refs\) image img1.\* in"):
        plan_of(tmp_path, [local(edits, conditioning_data="refs"), ref])
    make_image(refs / "img1.png", (128, 128))
    make_image(refs / "stray.png", (128, 128))
    with pytest.raises(GlanceError, match=r"stray.png: conditioning \(refs\) image without a target"):
        plan_of(tmp_path, [local(edits, conditioning_data="refs"), ref])
    (refs / "stray.png").unlink()
    make_image(refs / "img1.png", (128, 64))
    with pytest.raises(GlanceError, match="img1.png: reference_strict image is 128x64 but its target img1.png is "
                                          "128x128 .*use reference_loose"):
        plan_of(tmp_path, [local(edits, conditioning_data="refs"), ref])
    with pytest.raises(GlanceError, match="source_dataset_id 'other' is not an image dataset linking this one"):
        plan_of(tmp_path, [local(edits, conditioning_data="refs"), {**ref, "source_dataset_id": "other"}])


def test_several_conditioning_datasets_random_or_combined(tmp_path):
    edits = make_dataset(tmp_path / "edits", n=3)
    refs = []
    for name in ("r1", "r2"):
        make_dataset(tmp_path / name, n=3)
        refs.append({"id": name, "type": "local", "dataset_type": "conditioning", "caption_strategy": "textfile",
                     "instance_data_dir": str(tmp_path / name), "conditioning_type": "reference_strict"})
    plan = plan_of(tmp_path, [local(edits, resolution=64, conditioning_data=["r1", "r2"]), *refs])
    assert [[c.dataset_id for c in s.conditioning] for s in plan.samples] == [["r1", "r2"]] * 3
    assert any("caption keys are not used on a conditioning dataset" in n for n in plan.notices)
    sampler = BatchSampler(plan.groups, 1, seed=0, choices=plan.conditioning_choices())
    picks = {sampler.next().conditioning for _ in range(12)}
    assert picks == {0, 1}
    assert BatchSampler(plan.groups, 1, seed=0).next().conditioning is None  # combined: all of them


@pytest.fixture
def record_shapes(spy_forward):
    from diffusers import FluxTransformer2DModel

    return spy_forward(FluxTransformer2DModel, lambda hidden_states, *a, **k: tuple(hidden_states.shape))


@pytest.mark.slow
def test_glance_on_two_aspect_buckets(tiny_flux, tmp_path, capsys, record_shapes):
    data = tmp_path / "data"
    data.mkdir()
    for i, size in enumerate([(128, 128), (128, 128), (192, 96)]):
        make_image(data / f"img{i}.png", size, seed=i)
        (data / f"img{i}.txt").write_text(f"a red gradient {i}")
    cfg = write_configs(tmp_path, tiny_flux, steps=4, **{"--train_batch_size": 2})
    write_backend(tmp_path / "config", [local(data, resolution=128, repeats=1)])
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 image(s) in 1 dataset(s); 6 sample(s) per epoch" in out and "128x128 -> 2, 176x96 -> 1" in out
    assert "sample(s) at 128x128 (the largest of 2 buckets" in out and "img2 176x96 <- img2.txt" in out
    assert main(["glance", "--config", str(cfg)]) == 0
    train = [s for s in record_shapes if s[0] == 2]  # the eval passes use a batch of 5 (one per sigma)
    assert len(train) == 8  # 4 steps x 2 phases
    tokens = Counter(s[1] for s in train)
    assert set(tokens) == {64, 66}  # 128x128 -> 8x8 tokens, 176x96 -> 11x6: every batch from one bucket
    resolved = json.loads((tmp_path / "output" / "glancetune_config.json").read_text())
    assert resolved["buckets"] == {"128x128": 2, "176x96": 1} and resolved["record"]["resolution"] == [128, 128]


def test_glance_single_image(tiny_flux, tmp_path, capsys):
    make_dataset(tmp_path / "data", n=2)
    cfg = write_configs(tmp_path, tiny_flux, glance_single_image=True)
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "glance_single_image" in err and "holds 2 images (img0.png, img1.png)" in err
    (tmp_path / "data" / "img1.png").unlink()
    (tmp_path / "data" / "img1.txt").unlink()
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0


@pytest.mark.slow
def test_one_image_with_repeats_trains_identically(tiny_flux, tmp_path):
    """A one-image dataset never draws from the sampler: repeats and bigger batches-per-epoch change nothing."""
    files = []
    for name, reps in (("plain", 0), ("reps", 3)):
        root = tmp_path / name
        cfg = write_configs(root, tiny_flux, steps=2, **{"--train_batch_size": 2, "--flow_custom_timesteps": "1000,500"})
        write_backend(root / "config", [local(root / "data", resolution=128, repeats=reps)])
        assert main(["train", "--config", str(cfg)]) == 0
        files.append((root / "output" / "pytorch_lora_weights.safetensors").read_bytes())
    assert files[0] == files[1]


# --- sizing notices ---------------------------------------------------------------------------------------------------
def test_upscale_notice(tmp_path, caplog):
    d = make_dir(tmp_path)
    for name, size in (("small", (40, 40)), ("fine", (90, 90))):
        make_image(d / f"{name}.png", size)
        (d / f"{name}.txt").write_text(name)
    caplog.set_level(logging.INFO)
    plan = load_plan(load_backends(backend(tmp_path, [local(d, resolution=128)])), 16)
    small = next(s for s in plan.samples if s.key == "small")
    factor = small.crop.resize[0] / 40
    assert factor > 2
    lines = [m for m in caplog.messages if "upscaled" in m]
    assert lines == [f"notice: {d / 'small.png'}: upscaled {factor:.2f}x (40x40 -> {small.crop.resize[0]}x"
                     f"{small.crop.resize[1]}) to reach its training size {small.width}x{small.height}"]


def test_upscale_notices_are_capped(tmp_path):
    d = make_dir(tmp_path)
    for i in range(7):
        make_image(d / f"s{i}.png", (32, 32))
        (d / f"s{i}.txt").write_text("x")
    plan = build_plan(load_backends(backend(tmp_path, [local(d, resolution=128)])), 16)
    assert sum("upscaled" in n and "s" in n for n in plan.notices if n.startswith(str(d))) == 5
    assert any("... and 2 more image(s) upscaled" in n for n in plan.notices)


def test_extreme_aspect_notice(tmp_path, caplog):
    d = make_dir(tmp_path)
    make_image(d / "wide.png", (640, 128))
    (d / "wide.txt").write_text("wide")
    caplog.set_level(logging.INFO)
    s = load_plan(load_backends(backend(tmp_path, [local(d, resolution=256)])), 16).samples[0]
    aspect = s.width / s.height
    assert aspect > 4 and min(s.width, s.height) >= 64
    assert f"notice: {d / 'wide.png'}: extreme aspect ratio {aspect:.3g}:1 (training size {s.width}x{s.height})" \
        in caplog.messages


def test_extreme_aspect_with_a_tiny_side_is_an_error(tmp_path, capsys):
    d = make_dir(tmp_path)
    make_image(d / "strip.png", (640, 64))
    (d / "strip.txt").write_text("strip")
    cfg = backend(tmp_path, [local(d, resolution=128)])
    with pytest.raises(GlanceError) as e:
        build_plan(load_backends(cfg), 16)
    msg = str(e.value)
    assert msg.startswith(f"{d / 'strip.png'}: training size ") and "has a side below 64 px" in msg
    rc, out = validate(capsys, "--data-backend-config", cfg)
    assert rc == 1 and problems_of(out) == [msg] and "extreme aspect with a side below 64 px" in out
    assert build_plan(load_backends(backend(tmp_path, [local(d, resolution=128, crop=True)])), 16).samples


def test_resolution_snap_notice(tmp_path, caplog):
    d = make_dataset(tmp_path / "d", n=1)
    caplog.set_level(logging.INFO)
    load_plan(load_backends(backend(tmp_path, [local(d, resolution=100)])), 16)
    assert any(m.startswith("notice: ") and "resolution 100 (pixel_area) is not a multiple of 16" in m
               and "(100 -> 96 for a square image)" in m for m in caplog.messages), caplog.messages
    caplog.clear()
    load_plan(load_backends(backend(tmp_path, [local(d, resolution=100)])), 4)
    load_plan(load_backends(backend(tmp_path, [local(d, resolution=1.0, resolution_type="area")])), 16)
    assert not any("not a multiple" in m for m in caplog.messages)
