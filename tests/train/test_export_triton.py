"""The `triton` archive on a real tritonserver (2.51, from the nvidia-pytriton wheel, CPU), driven
the way a SageMaker GPU multi-model endpoint drives it: explicit model control, two users'
archives (a LoRA one and a merged-fp16 one) loaded through the HTTP repository API, inferred,
one unloaded while the other keeps serving, then reloaded. Each image must equal the
in-process pipeline's for the same seed. The serving env (numpy<2, the 3.11 stub) is built once
by scripts/reader_envs.py and cached outside the clone."""

from __future__ import annotations

import io
import platform
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from scripts_loader import load_script  # noqa: E402
from test_export_formats import attach_lora, load_pipe  # noqa: E402
from train.export import ExportConfig, ExportConfigError, ExportError, export_model  # noqa: E402
from train.export.triton import config_pbtxt, unpack  # noqa: E402
PROMPT = "a photo of sks dog"
CALL = dict(seed=3, steps=2, size=(64, 64))


@pytest.fixture(scope="module")
def triton_env():
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("the nvidia-pytriton wheel (tritonserver) exists for Linux x86_64 only")
    envs = load_script("reader_envs")
    try:
        return envs.ensure_env("triton")
    except envs.EnvBuildError as e:  # the message names the package step that failed
        pytest.skip(f"the Triton serving env (nvidia-pytriton wheel, numpy<2) cannot be installed here: {e}")


def png_pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def in_process(pipe) -> np.ndarray:
    """What the model's execute() computes, run here with the project's own stack."""
    image = pipe(PROMPT, num_inference_steps=CALL["steps"], height=CALL["size"][0], width=CALL["size"][1],
                 generator=torch.Generator("cpu").manual_seed(CALL["seed"])).images[0]
    return np.asarray(image).astype(np.int16)


@pytest.fixture(scope="module")
def users(tiny_model, triton_env, tmp_path_factory, demo_data):
    """user-a: LoRA archive (UNet + text encoder); user-b: merged-fp16 archive; user-c: the
    archive a training task writes (`python -m train --export lora,triton --triton-env ENV`:
    the same code path, run_task). Returns {name: (archive, manifest, reference image)}."""
    root = tmp_path_factory.mktemp("triton-users")
    out = {}
    for name, seed, source in (("user-a", 1, "lora"), ("user-b", 2, "merged-fp16")):
        pipe = attach_lora(load_pipe(tiny_model), seed=seed)
        formats = "lora,triton" if source == "lora" else "lora,merged-fp16,triton"
        manifest = export_model(pipe, ExportConfig(formats=formats, triton_source=source, triton_env=str(triton_env),
                                                   triton_name=name, drift_check=False, triton_footprint=name == "user-a"),
                                root / name, base_model_dir=tiny_model, train_text_encoder=True, rank=4, lora_alpha=8)
        reference = in_process(pipe if source == "lora" else load_pipe(root / name / "merged-fp16"))
        out[name] = (root / name / manifest["formats"]["triton"]["path"], manifest, reference)
    out["user-c"] = trained_archive(tiny_model, demo_data, triton_env, root / "user-c")
    return out


def trained_archive(tiny_model, demo_data, triton_env, root):
    """A task trained by the loop with the triton format, as `python -m train` runs it."""
    from train.config import TrainConfig
    from train.families import family_named
    from train.pipeline import load_base
    from train.task import run_task

    cfg = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt=PROMPT, resolution=32,
                      max_train_steps=2, learning_rate=5e-3, preview_every=0, checkpoint_every=0, num_preview_images=1,
                      preview_inference_steps=1, export="lora,triton", export_check=False, triton_env=str(triton_env))
    run_task(load_base(tiny_model), cfg, model_dir=root / "model", checkpoint_dir=root / "ck", task_id="user-c")
    manifest = __import__("json").loads((root / "model" / "manifest.json").read_text())
    pipe = family_named("sd").load_pipeline(tiny_model, dtype=torch.float32)
    pipe.load_lora_weights(root / "model")
    return root / "model" / manifest["formats"]["triton"]["path"], manifest, in_process(pipe)


def test_bad_triton_options_fail_early_with_the_valid_values(trained_pipe, tiny_model, tmp_path):
    with pytest.raises(ExportConfigError, match="triton_source='kohya': valid values are lora, merged-fp16"):
        ExportConfig(formats="triton", triton_source="kohya")
    with pytest.raises(ExportError, match="triton_env"):
        config_pbtxt("lora", 'env"with-quote')
    with pytest.raises(ExportError, match="triton: .*merged-int8 is not among the exported formats"):
        export_model(trained_pipe, ExportConfig(formats="lora,triton", triton_source="merged-int8", drift_check=False),
                     tmp_path, base_model_dir=tiny_model, train_text_encoder=True, rank=4, lora_alpha=8)
    manifest = __import__("json").loads((tmp_path / "manifest.json").read_text())
    assert manifest["formats"]["lora"]["status"] == "ok" and manifest["formats"]["triton"]["status"] == "failed"


@pytest.fixture(scope="module")
def trained_pipe(tiny_model):
    return attach_lora(load_pipe(tiny_model))


@pytest.mark.slow
def test_archive_is_one_model_folder_with_config_model_and_artifact(users, triton_env):
    archive, manifest, _ = users["user-a"]
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        config = tar.extractfile("user-a/config.pbtxt").read().decode()
    assert {"user-a/config.pbtxt", "user-a/1/model.py", "user-a/1/inference.py", "user-a/1/serving.json",
            "user-a/1/pytorch_lora_weights.safetensors"} <= names
    assert 'backend: "python"' in config and f'"EXECUTION_ENV_PATH" value: {{ string_value: "{triton_env}" }}' in config
    # what a training task writes: named after the task, the serving env set from its settings
    trained, _, _ = users["user-c"]
    assert trained.name == "user-c.tar.gz"
    with tarfile.open(trained) as tar:
        assert str(triton_env) in tar.extractfile("user-c/config.pbtxt").read().decode()
    # the default is a conventional path of the serving image; "none" leaves the image's Python
    assert '"EXECUTION_ENV_PATH" value: { string_value: "/opt/tritonserver/envs/lora-fanout" }' in config_pbtxt(
        "lora", ExportConfig().triton_env)
    assert "EXECUTION_ENV_PATH" not in config_pbtxt("lora", "none")
    for tensor in ('name: "prompt" data_type: TYPE_STRING', 'name: "seed" data_type: TYPE_INT64',
                   'name: "steps" data_type: TYPE_INT32', 'name: "size" data_type: TYPE_INT32 dims: [ 2 ]',
                   'name: "image" data_type: TYPE_STRING'):
        assert tensor in config
    entry = manifest["formats"]["triton"]
    assert entry["packs"] == "lora" and any("tritonserver 2.51" in r["reader"] for r in entry["suite_verified"])
    # This run read the archive back with its own loader in a fresh process (the footprint).
    assert len(entry["verified"]) == 1 and "inference.py" in entry["verified"][0]["reader"]
    # A LoRA archive loads its own base per user model: the footprint shows the whole pipeline.
    footprint = entry["footprint"]
    assert footprint["weights_bytes"] > 8e6 and footprint["rss_bytes"] > footprint["runtime_rss_bytes"] > 0


@pytest.mark.slow
def test_two_users_load_infer_unload_reload_on_a_real_tritonserver(users, triton_env, tmp_path):
    load_script("serve_process")  # triton_server imports its siblings as scripts/ would be on sys.path
    server_mod = load_script("triton_server")
    repository = tmp_path / "repository"
    repository.mkdir()
    for archive, _, _ in users.values():
        unpack(archive, repository)  # as trained: no renaming, no edits; each is its own task's name
    with server_mod.TritonServer(repository, env=triton_env, log_path=tmp_path / "triton.log") as server:
        assert server.index() == [{"name": "user-a"}, {"name": "user-b"}, {"name": "user-c"}]  # nothing loaded yet
        load_seconds = {name: server.load(name) for name in users}
        images = {name: png_pixels(server.infer(name, PROMPT, **CALL)) for name in users}
        for name, (_, _, reference) in users.items():
            assert np.array_equal(images[name], reference), f"{name}: differs from the in-process image"
        assert np.abs(images["user-a"] - images["user-b"]).mean() > 1  # two users, two models
        memory = {name: server_mod.memory_of(pid) for name, pid in server.model_processes().items()}
        assert set(memory) == {"user-a", "user-b", "user-c"}  # one process per loaded user model
        server.unload("user-c")
        print(f"\nload seconds {load_seconds}; per-model memory {memory}")

        server.unload("user-a")
        assert not server.ready("user-a") and server.ready("user-b")
        with pytest.raises(server_mod.TritonError, match="user-a"):
            server.infer("user-a", PROMPT, **CALL)
        assert np.array_equal(png_pixels(server.infer("user-b", PROMPT, **CALL)), images["user-b"])
        assert set(server.model_processes()) == {"user-b"}  # the unloaded model's memory is freed

        server.load("user-a")
        assert np.array_equal(png_pixels(server.infer("user-a", PROMPT, **CALL)), images["user-a"])
        # a bad request is the caller's error: INVALID_ARG, HTTP 400, naming the field
        with pytest.raises(server_mod.TritonError, match="HTTP 400: .*steps=0"):
            server.infer("user-b", PROMPT, seed=0, steps=0, size=(64, 64))
        with pytest.raises(server_mod.TritonError, match="HTTP 400: .*size=60x64"):
            server.infer("user-b", PROMPT, seed=0, steps=1, size=(60, 64))
        assert server.ready("user-b")
