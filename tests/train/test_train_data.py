"""Images as a user hands them in: orientation, modes, captions, and an error naming the file
for every bad input (also through run_task, where status.json must say failed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_helpers import FAST
from PIL import Image

from train.data import batch_indices, load_images, to_tensor
from train.errors import DataError

PROMPT = "a photo of sks toy"


def load(folder, **kw):
    return load_images(folder, prompt=PROMPT, resolution=32, max_pixels=kw.pop("max_pixels", 10**7), **kw)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (60, 40), "red")
    exif = im.getexif()
    exif[0x0112] = 6                      # "rotate 90 CW to display": a portrait photo stored landscape
    im.save(tmp_path / "photo.jpg", exif=exif)
    (example,) = load(tmp_path)
    assert example.image.height > example.image.width, "EXIF orientation must be applied"
    assert min(example.image.size) == 32


def test_rgba_and_grayscale_become_rgb_and_short_side_is_resized(tmp_path):
    Image.new("RGBA", (64, 96), (0, 0, 255, 0)).save(tmp_path / "a.png")
    Image.new("L", (100, 50), 128).save(tmp_path / "b.webp")
    a, b = load(tmp_path)
    assert a.image.mode == b.image.mode == "RGB"
    assert a.image.size == (32, 48) and b.image.size == (64, 32)
    assert a.image.getpixel((0, 0)) == (255, 255, 255), "transparent pixels go on white, not black"
    x = to_tensor(b, 32, center_crop=True, random_flip=False)
    assert tuple(x.shape) == (3, 32, 32) and -1.0 <= float(x.min()) <= float(x.max()) <= 1.0


def test_caption_file_overrides_the_prompt_but_keeps_the_instance_token(tmp_path):
    for name in ("a", "b", "c"):
        Image.new("RGB", (40, 40), "green").save(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_text("a sks toy on a beach\n")
    (tmp_path / "b.txt").write_text("on a wooden table")
    captions = {e.path.stem: e.caption for e in load(tmp_path)}
    assert captions["a"] == f"{PROMPT}, a sks toy on a beach"
    assert captions["b"] == f"{PROMPT}, on a wooden table"
    assert captions["c"] == PROMPT
    (tmp_path / "a.txt").write_text(f"{PROMPT} on a beach")
    assert {e.path.stem: e.caption for e in load(tmp_path)}["a"] == f"{PROMPT} on a beach"


def test_empty_folder_names_the_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"{tmp_path}.*holds no images"):
        load(tmp_path)


def test_unreadable_image_names_the_file(tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg: unreadable image"):
        load(tmp_path)


def test_too_few_images_names_the_folder_and_flag(tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "only.png")
    with pytest.raises(DataError, match=r"holds 1 image\(s\); at least 3 are needed \(--min-images\)"):
        load(tmp_path, min_images=3)


def test_decompression_bomb_is_rejected_before_decoding(tmp_path):
    Image.new("RGB", (400, 300)).save(tmp_path / "huge.png")
    with pytest.raises(DataError, match=r"huge.png: 400x300 = 120000 pixels is over the limit of 100000"):
        load(tmp_path, max_pixels=100_000)


def test_data_order_is_a_function_of_seed_and_step_covering_every_image_each_epoch():
    epoch = [batch_indices(3, "instance", step, 1, 5)[0] for step in range(5)]
    assert sorted(epoch) == [0, 1, 2, 3, 4]
    assert batch_indices(3, "instance", 7, 2, 5) == batch_indices(3, "instance", 7, 2, 5)
    assert [batch_indices(4, "instance", s, 1, 5)[0] for s in range(5)] != epoch


def test_bad_image_fails_the_task_with_status_and_leaves_the_base_clean(base, tmp_path):
    from train.config import TrainConfig
    from train.task import run_task

    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(data / "ok.png")
    (data / "bad.png").write_bytes(b"garbage")
    cfg = TrainConfig(instance_data=str(data), instance_prompt=PROMPT, **FAST)
    with pytest.raises(DataError, match="bad.png"):
        run_task(base, cfg, model_dir=tmp_path / "model", checkpoint_dir=tmp_path / "ck")
    status = json.loads((tmp_path / "ck" / "status.json").read_text())
    assert status["state"] == "failed" and "bad.png" in status["error"]
    assert not hasattr(base.unet, "peft_config")


def test_a_file_symlink_leading_out_of_the_folder_is_refused_naming_the_file(tmp_path):
    data, elsewhere = tmp_path / "images", tmp_path / "another-user"
    data.mkdir()
    elsewhere.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(data / "ok.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(elsewhere / "face.png")
    (data / "inside.png").symlink_to(data / "ok.png")          # stays in the folder: fine
    assert len(load(data)) == 2
    (data / "stolen.png").symlink_to(elsewhere / "face.png")
    with pytest.raises(DataError, match=r"stolen.png is a symlink to a file outside"):
        load(data)
    (data / "stolen.png").unlink()
    (elsewhere / "secret.txt").write_text("the host's secret")
    (data / "ok.txt").symlink_to(elsewhere / "secret.txt")     # a caption is read too
    with pytest.raises(DataError, match=r"ok.txt is a symlink to a file outside"):
        load(data)
