"""The server's pure parts, without a model: settings from SageMaker's environment, request
checks, where a request may read models from, and both caches' LRU order."""

from __future__ import annotations

import pytest

from serve.cache import DiskCache, MemoryCache
from serve.config import ServeConfig, family_defaults
from serve.errors import ConfigError, Unprocessable, UnknownModel
from serve.request import Limits, parse_request
from serve.sources import Resolver



def defaults_of(family: str, variant: str = ""):
    import diffusers

    from train.families import family_named

    fam = family_named(family)
    return family_defaults(fam, variant, getattr(diffusers, fam.pipeline_class))


LIMITS = Limits(max_images=4, max_steps=50, max_side=1024, size_multiple=8, default_height=512, default_width=512,
                defaults=defaults_of("sd"))


def test_settings_come_from_serve_variables_and_flags_win():
    cfg = ServeConfig.from_env({"SERVE_CACHE_SIZE": "3", "SERVE_MODELS_URI": "s3://bkt/models/",
                                "SAGEMAKER_BIND_TO_PORT": "9000", "OTHER": "x"}, cache_size=5)
    assert (cfg.cache_size, cfg.port, cfg.model_prefixes) == (5, 9000, ("s3://bkt/models/",))
    with pytest.raises(ConfigError, match="SERVE_CACHE_SIZ is not a setting; valid: .*SERVE_CACHE_SIZE"):
        ServeConfig.from_env({"SERVE_CACHE_SIZ": "3"})
    with pytest.raises(ConfigError, match="max_rank=0: must be at least 1"):
        ServeConfig(max_rank=0)
    with pytest.raises(ConfigError, match="models_uri: s3://bucket is not s3://BUCKET/PREFIX/"):
        ServeConfig(models_uri="s3://bucket")


def test_request_defaults_are_the_familys_recipe_for_its_variant():
    from train.families import family_named
    from train.recipes import recipe_for

    for family, variant in (("sd", ""), ("flux2-klein", "base"), ("flux2-klein", "distilled"), ("z-image", "turbo")):
        recipe, got = recipe_for(family_named(family), variant), defaults_of(family, variant)
        assert (got.steps, got.guidance) == (recipe["preview_inference_steps"], recipe["preview_guidance_scale"])
    base, distilled = defaults_of("flux2-klein", "base"), defaults_of("flux2-klein", "distilled")
    assert base.steps > distilled.steps and base.guidance > 1 >= distilled.guidance   # Base: CFG; distilled: none
    assert defaults_of("sd").negative_prompt and not defaults_of("flux2-klein", "base").negative_prompt


def test_a_request_gets_the_familys_defaults_and_every_problem_at_once():
    gen = parse_request({"model": "u/r", "prompt": "a dog", "seed": 3}, LIMITS)
    sd = defaults_of("sd")
    assert (gen.steps, gen.guidance, gen.height, gen.width, gen.count, gen.seed) == (sd.steps, sd.guidance, 512, 512, 1, 3)
    assert parse_request({"model": "u/r", "prompt": "p"}, LIMITS).seed >= 0       # a seed is drawn and echoed
    with pytest.raises(Unprocessable) as err:
        parse_request({"model": "", "prompt": 7, "num_images": 5, "width": 500, "steps": 3, "seed": True}, LIMITS)
    message = str(err.value)
    for part in ("unknown field(s) steps", "model: expected a non-empty string", "prompt: expected a non-empty",
                 "num_images: 5 is outside 1..4", "width: 500 is not a multiple of 8", "seed: expected an integer"):
        assert part in message


def test_models_are_read_only_from_the_allowed_places(tmp_path):
    (tmp_path / "root" / "alice").mkdir(parents=True)
    (tmp_path / "root" / "alice" / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    resolver = Resolver(str(tmp_path / "root"), ("s3://bkt/models/",))
    assert resolver.resolve("alice").folder == str(tmp_path / "root" / "alice")
    assert resolver.resolve("s3://bkt/models/u/r1").key == "s3://bkt/models/u/r1/pytorch_lora_weights.safetensors"
    for name, error in (("../secret.safetensors", Unprocessable), ("s3://bkt/other/u/r/", Unprocessable),
                        ("s3://bkt/models/../requests/x/", Unprocessable), ("bob", UnknownModel)):
        with pytest.raises(error):
            resolver.resolve(name)
    with pytest.raises(Unprocessable, match="reads no local folders"):
        Resolver("", ()).resolve("alice")


def test_both_caches_evict_the_least_recently_used(tmp_path):
    memory = MemoryCache(2)
    memory.put("a", 1), memory.put("b", 2)
    assert memory.get("a") == 1          # a is now the most recent
    memory.put("c", 3)
    assert memory.keys() == ["a", "c"] and memory.get("b") is None
    assert memory.stats == {"hits": 1, "misses": 1, "evictions": 1}

    disk = DiskCache(tmp_path / "cache", 2)
    for name in ("x", "y"):
        disk.put(name, lambda folder, n=name: (folder / "f").write_text(n))
    disk.get("x")
    disk.put("z", lambda folder: (folder / "f").write_text("z"))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["x", "z"]
    with pytest.raises(OSError):       # a failed download leaves nothing behind
        disk.put("w", lambda folder: (_ for _ in ()).throw(OSError("network")))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["x", "z"]
    assert DiskCache(tmp_path / "cache", 2).names() == ["x", "z"]    # a restart finds them


def test_a_base_given_as_an_s3_prefix_is_downloaded_once(aws, tiny_model, tmp_path):
    """What the Terraform endpoint does: SERVE_BASE_MODEL=s3://.../base/ (the jobs' model channel)."""
    from serve.sources import download_base

    s3 = aws["s3"]
    for path in tiny_model.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "serve-test", f"bases/sd/{path.relative_to(tiny_model).as_posix()}")
    folder = download_base(s3, "s3://serve-test/bases/sd/", tmp_path)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != ".complete") \
        == sorted(p.relative_to(tiny_model).as_posix() for p in tiny_model.rglob("*") if p.is_file())
    (folder / "model_index.json").write_text("{}")          # a second start reuses the copy
    assert download_base(s3, "s3://serve-test/bases/sd", tmp_path) == folder
    assert (folder / "model_index.json").read_text() == "{}"
    with pytest.raises(UnknownModel, match="no model_index.json under s3://serve-test/bases/none/"):
        download_base(s3, "s3://serve-test/bases/none/", tmp_path)
