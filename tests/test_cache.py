"""On-disk caches of text embeddings and VAE latents: hit, miss, invalidation, atomic writes, bad cache files; a
caption longer than the tokenizer keeps (how many tokens are cut). Killed cache writes: test_interrupts.py."""
import json
from pathlib import Path

import pytest
import torch

from conftest import make_dataset, make_image, write_configs
from glancetune.cli import main
from glancetune.data.cache import TensorCache, digest
from glancetune.errors import GlanceError
from glancetune.families.flux import Flux1


def lora_bytes(out: Path) -> dict:
    return {r: (out / r / "pytorch_lora_weights.safetensors").read_bytes() for r in ("slow", "fast")}


@pytest.fixture
def counting(monkeypatch):
    """Counts the family's encoder calls (a cache hit makes none)."""
    calls = {"text": 0, "vae": 0, "pipelines": []}
    enc_p, enc_i, load = Flux1.encode_prompts, Flux1.encode_images, Flux1.load_pipeline

    def ep(self, *a, **k):
        calls["text"] += 1
        return enc_p(self, *a, **k)

    def ei(self, *a, **k):
        calls["vae"] += 1
        return enc_i(self, *a, **k)

    def lp(self, path, dtype, **components):
        calls["pipelines"].append(sorted(components))
        return load(self, path, dtype, **components)

    monkeypatch.setattr(Flux1, "encode_prompts", ep)
    monkeypatch.setattr(Flux1, "encode_images", ei)
    monkeypatch.setattr(Flux1, "load_pipeline", lp)
    return calls


@pytest.mark.slow
def test_hit_miss_and_invalidation(tiny_flux, tmp_path, counting):
    cfg = write_configs(tmp_path, tiny_flux, steps=3, **{"--cache_dir": str(tmp_path / "cache"),
                                                          "--overwrite_output_dir": True})
    assert main(["glance", "--config", str(cfg)]) == 0
    assert (counting["text"], counting["vae"]) == (1, 1)
    # encoders loaded without the transformer, then the transformer without the encoders
    assert counting["pipelines"] == [["transformer"], ["text_encoder", "text_encoder_2", "vae"]]
    first = lora_bytes(tmp_path / "output")
    assert len(list((tmp_path / "cache" / "text").glob("*.safetensors"))) == 1
    assert len(list((tmp_path / "cache" / "vae").glob("*.safetensors"))) == 1

    counting["pipelines"].clear()
    assert main(["glance", "--config", str(cfg)]) == 0
    assert (counting["text"], counting["vae"]) == (1, 1)  # all hits: no encoder ran, none was loaded
    assert counting["pipelines"] == [["text_encoder", "text_encoder_2", "vae"]]
    assert lora_bytes(tmp_path / "output") == first  # the cached encodings are exact

    (tmp_path / "data" / "img0.txt").write_text("another caption", encoding="utf-8")
    assert main(["glance", "--config", str(cfg)]) == 0
    assert (counting["text"], counting["vae"]) == (2, 1)  # caption changed: text rebuilt, latent reused

    make_image(tmp_path / "data" / "img0.png", seed=7)
    assert main(["glance", "--config", str(cfg)]) == 0
    assert (counting["text"], counting["vae"]) == (2, 2)  # image changed: latent rebuilt
    assert len(list((tmp_path / "cache" / "vae").glob("*.safetensors"))) == 2

    assert main(["glance", "--config", str(cfg), "--set", "tokenizer_max_length=16"]) == 0
    assert (counting["text"], counting["vae"]) == (3, 2)  # sequence length is part of the text key


@pytest.mark.slow
def test_cache_command_then_train_reuses(tiny_flux, tmp_path, counting, capsys):
    cfg = write_configs(tmp_path, tiny_flux, steps=2, **{"--cache_dir": str(tmp_path / "c")})
    assert main(["cache", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "1 samples: 2 of 2 entries computed, 0 reused" in out
    assert counting["pipelines"] == [["transformer"]]  # the transformer is never loaded for caching
    assert main(["cache", "--config", str(cfg)]) == 0
    assert "0 of 2 entries computed, 2 reused" in capsys.readouterr().out
    assert main(["glance", "--config", str(cfg)]) == 0
    assert (counting["text"], counting["vae"]) == (1, 1)


@pytest.mark.slow
def test_truncated_cache_file_is_an_error(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, steps=2, **{"--cache_dir": str(tmp_path / "c")})
    assert main(["cache", "--config", str(cfg)]) == 0
    f = next((tmp_path / "c" / "vae").glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:-40])
    capsys.readouterr()
    assert main(["glance", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(f) in err and "truncated or corrupt" in err
    assert not (tmp_path / "output").exists()


@pytest.mark.slow
def test_unwritable_cache_dir_is_an_error(tiny_flux, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = write_configs(tmp_path, tiny_flux, steps=2, **{"--cache_dir": str(blocker / "sub")})
    assert main(["glance", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cache directory is not writable" in err and str(blocker) in err
    assert not (tmp_path / "output").exists()


def test_crash_mid_write_leaves_nothing_loadable(tmp_path, monkeypatch):
    import safetensors.torch as st

    cache = TensorCache(tmp_path, "test")
    key = digest({"a": 1})

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st, "save_file", crash)
    with pytest.raises(GlanceError, match="cannot write test cache"):
        cache.put(key, {"x": torch.ones(2)}, {"a": 1})
    assert list(tmp_path.iterdir()) == []  # no temp file left, nothing at the final name
    assert cache.get(key) is None


def test_round_trip_and_foreign_file(tmp_path):
    cache = TensorCache(tmp_path, "test")
    value = {"x0": torch.randn(1, 4, 8), "img_shapes": [[[1, 2, 2]]], "ids": torch.arange(3)}
    k1, k2 = digest({"n": 1}), digest({"n": 2})
    cache.put(k1, value, {"n": 1})
    got = cache.get(k1)
    assert torch.equal(got["x0"], value["x0"]) and torch.equal(got["ids"], value["ids"])
    assert got["img_shapes"] == [[[1, 2, 2]]]
    assert json.loads(json.dumps(got["img_shapes"])) == value["img_shapes"]
    cache.path(k1).rename(cache.path(k2))  # a file under another key's name is not trusted
    with pytest.raises(GlanceError, match="does not belong to this key"):
        cache.get(k2)


@pytest.mark.slow
def test_dataset_cache_dirs_from_the_dataloader_json(tiny_flux, tmp_path, counting):
    """SimpleTuner's `cache_dir_vae` (per image dataset) and the text_embeds dataset's `cache_dir` are honoured."""
    from conftest import make_dataset

    make_dataset(tmp_path / "imgs", n=2)
    backend = tmp_path / "multidatabackend.json"
    backend.write_text(json.dumps([
        {"id": "mine", "type": "local", "instance_data_dir": str(tmp_path / "imgs"), "caption_strategy": "textfile",
         "resolution": 128, "resolution_type": "pixel_area", "cache_dir_vae": str(tmp_path / "vae-mine")},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True,
         "cache_dir": str(tmp_path / "text-here")}]))
    cfg = write_configs(tmp_path, tiny_flux, steps=2, **{"--data_backend_config": str(backend),
                                                          "--cache_dir": str(tmp_path / "unused")})
    assert main(["cache", "--config", str(cfg)]) == 0
    assert len(list((tmp_path / "vae-mine").glob("*.safetensors"))) == 2
    assert len(list((tmp_path / "text-here").glob("*.safetensors"))) == 2
    assert not (tmp_path / "unused").exists()
    assert main(["glance", "--config", str(cfg)]) == 0
    # 2 captions, 2 images of one size: one VAE call (vae_batch_size 4); training reused both
    assert (counting["text"], counting["vae"]) == (2, 1)


def test_vae_batch_size_batches_the_encoder(tiny_flux, tmp_path, counting):
    """Images of one size are encoded vae_batch_size at a time; each cached latent equals its one-at-a-time twin."""
    from conftest import make_dataset
    from safetensors.torch import load_file

    make_dataset(tmp_path / "data", n=3)
    latents = {}
    for bs in (1, 2):
        counting["vae"] = 0
        cfg = write_configs(tmp_path, tiny_flux, steps=2, **{"--cache_dir": str(tmp_path / f"c{bs}"),
                                                             "--vae_batch_size": bs})
        assert main(["cache", "--config", str(cfg)]) == 0
        assert counting["vae"] == {1: 3, 2: 2}[bs]
        latents[bs] = {f.name: load_file(str(f)) for f in (tmp_path / f"c{bs}" / "vae").glob("*.safetensors")}
    assert latents[1].keys() == latents[2].keys() and len(latents[1]) == 3  # same keys: batching is not identity
    for name, entry in latents[1].items():
        for k, v in entry.items():
            torch.testing.assert_close(latents[2][name][k], v, rtol=1e-5, atol=1e-5)


def test_caption_longer_than_the_tokenizer_keeps(tiny_flux, tmp_path, caplog):
    make_dataset(tmp_path / "data", caption=" ".join(["gradient"] * 40))
    cfg = write_configs(tmp_path, tiny_flux, steps=1, tokenizer_max_length=16, cache_dir=str(tmp_path / "c"))
    caplog.set_level("INFO", logger="glancetune")
    assert main(["cache", "--config", str(cfg)]) == 0
    line = next(r.getMessage() for r in caplog.records if "tokens longer" in r.getMessage())
    n = int(line.split("caption is ")[1].split()[0])
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_flux, subfolder="tokenizer_2")
    assert n == len(tok(" ".join(["gradient"] * 40)).input_ids) - 16 > 0
