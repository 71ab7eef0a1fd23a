"""Photos as phones send them: every format read upright, colour converted through the embedded
profile to where littleCMS puts it, 16-bit grey scaled, the bomb guard for every format, a clear
error naming a file that cannot be read, and the whole corpus training in one tiny task."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from train_helpers import FAST
from PIL import Image, ImageCms
from photo_corpus import MARK, P3_GREEN, P3_PURE_RED, ROTATED, UPRIGHT, display_p3, p3_to_srgb_by_matrix, \
    srgb_colorants_error, write_corpus

from train.errors import DataError
from train.photos import open_photo

BIG = 10**8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(folder)
    return folder


def littlecms(raw, icc: bytes):
    """What littleCMS makes of ``raw`` pixels with profile ``icc`` in sRGB."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.profileToProfile(raw, source, ImageCms.createProfile("sRGB"), outputMode="RGB")


@pytest.mark.parametrize("name", sorted(ROTATED))
def test_every_format_phones_send_is_read_upright(corpus, name):
    raw = Image.open(corpus / name)
    expected_format = ROTATED[name]
    assert raw.format == expected_format, "the file is what it claims (written by Pillow / pillow-heif)"
    im = open_photo(corpus / name, BIG)
    assert im.mode == "RGB" and im.size == UPRIGHT, f"{name} must come out portrait, as the phone shows it"
    top, bottom = np.asarray(im)[2].mean(axis=0), np.asarray(im)[-3].mean(axis=0)
    assert np.abs(top - MARK).max() <= 12, f"{name}: the red band belongs on top (turned the wrong way?)"
    assert np.abs(bottom - MARK).max() > 40
    if expected_format == "MPO":
        assert raw.n_frames == 2 and abs(np.asarray(im)[..., 1].mean() - 255) > 60, "the primary frame, not the green one"


def test_a_display_p3_photo_lands_where_littlecms_puts_it_in_srgb(corpus):
    assert srgb_colorants_error() < 1e-4, "the profile maths reproduce littleCMS's own sRGB colorants"
    raw = Image.open(corpus / "p3.jpg")
    assert raw.info["icc_profile"] == display_p3()
    im = open_photo(corpus / "p3.jpg", BIG)
    expected = littlecms(raw.convert("RGB"), display_p3())
    assert np.array_equal(np.asarray(im), np.asarray(expected)), "every pixel converted by littleCMS"
    # Pure P3 red is outside sRGB: littleCMS clips it to sRGB's red.
    red = littlecms(Image.new("RGB", (1, 1), P3_PURE_RED), display_p3()).getpixel((0, 0))
    assert np.abs(np.asarray(im.getpixel((16, 8))) - red).max() <= 3
    # A P3 green moves far in sRGB, where an independent matrix computation also puts it.
    green = np.asarray(im.getpixel((48, 8)), float)
    assert np.abs(green - p3_to_srgb_by_matrix(P3_GREEN)).max() <= 3
    naive = np.asarray(raw.convert("RGB").getpixel((48, 8)), float)
    assert np.abs(naive - green).max() >= 15, "read as sRGB, the green would be off by this much"


def test_a_cmyk_jpeg_converts_through_its_profile(corpus):
    raw = Image.open(corpus / "cmyk.jpg")
    assert raw.mode == "CMYK" and "icc_profile" in raw.info
    im = open_photo(corpus / "cmyk.jpg", BIG)
    expected = littlecms(raw, raw.info["icc_profile"])
    assert np.array_equal(np.asarray(im), np.asarray(expected))
    cyan = np.asarray(im.getpixel((5, 5)), float)
    assert np.abs(cyan - (0, 158, 224)).max() <= 4, "solid cyan ink is the profile's press cyan"
    assert raw.convert("RGB").getpixel((5, 5)) == (0, 255, 255), "which a naive conversion gets wrong"


def test_sixteen_bit_grey_is_scaled_not_clipped_to_white(corpus):
    from photo_corpus import photo

    raw = Image.open(corpus / "grey16.png")
    assert raw.mode == "I;16"
    assert np.asarray(raw.convert("RGB")).mean() > 250, "a plain convert clips nearly everything to white"
    im = np.asarray(open_photo(corpus / "grey16.png", BIG), float)
    source = np.asarray(photo("camera").convert("L").resize((64, 64)), float)
    assert np.abs(im[..., 0] - source).max() <= 1 and (im[..., 0] == im[..., 2]).all()


@pytest.mark.parametrize("name", sorted(ROTATED) + ["p3.jpg", "cmyk.jpg", "grey16.png"])
def test_the_decompression_bomb_guard_reads_the_header_of_every_format(corpus, name):
    w, h = Image.open(corpus / name).size
    with pytest.raises(DataError, match=rf"{name}: {w}x{h} = {w * h} pixels is over the limit of {w * h - 1}"):
        open_photo(corpus / name, w * h - 1)


def test_a_file_that_cannot_be_read_fails_naming_it_and_the_readable_formats(tmp_path):
    from train.data import load_images

    Image.new("RGB", (40, 40)).save(tmp_path / "ok.png")
    (tmp_path / "IMG_0042.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic not really")
    (tmp_path / "notes.gif").write_bytes(b"GIF89a")        # not a photo type: not read at all
    with pytest.raises(DataError, match=r"IMG_0042.HEIC: unreadable image .*readable formats: jpg, jpeg, png, "
                                        r"webp, heic, heif, avif"):
        load_images(tmp_path, prompt="p", resolution=32, max_pixels=BIG)


def test_the_whole_corpus_trains_in_one_tiny_task_and_a_duplicate_is_dropped(base, corpus, tmp_path):
    import shutil

    from train.config import TrainConfig
    from train.task import run_task

    data = tmp_path / "photos"
    shutil.copytree(corpus, data)
    # What users do: the same photo again, re-encoded and slightly smaller.
    open_photo(data / "rotated.png", BIG).resize((46, 69)).save(data / "rotated-copy.jpg", quality=80)
    cfg = TrainConfig(instance_data=str(data), instance_prompt="a photo of sks toy", screen="drop", crop="face",
                      **{**FAST, "max_train_steps": 2, "preview_every": 0, "checkpoint_every": 0},
                      export="lora")
    result = run_task(base, cfg, model_dir=tmp_path / "model", checkpoint_dir=tmp_path / "ck")
    assert result.state == "completed" and np.isfinite(result.loss)
    status = json.loads((tmp_path / "ck" / "status.json").read_text())
    screening = status["screening"]
    assert set(screening) == {"mode", "kept", "dropped", "seconds", "images"}
    assert (screening["mode"], screening["kept"], screening["dropped"]) == ("drop", 9, 1)
    images = {i["file"]: i for i in screening["images"]}
    assert set(images) == {p.name for p in data.iterdir()}
    dropped = images.pop("rotated-copy.jpg")
    assert dropped["kept"] is False
    [finding] = dropped["findings"]
    assert set(finding) == {"check", "value", "limit", "message"}
    assert finding["check"] == "duplicate" and "rotated.png" in finding["message"]
    assert all(i["kept"] and not i["findings"] for i in images.values()), images
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["screening"] == screening
    assert status["crop"]["mode"] == "face" and "rotated-copy.jpg" not in status["crop"]["no_face"]


def test_the_original_size_is_the_photos_own_after_a_reduced_decode(tmp_path):
    """SDXL conditions on the photo's original size: a JPEG decoded at 1/8 (DCT scaling) and a
    HEIC decoded once for screening and kept reduced for training still report their own."""
    from photo_corpus import photo

    from train.config import TrainConfig
    from train.data import load_images
    from train.photos import register_formats
    from train.screen import screen_task

    register_formats()
    exif = Image.Exif()
    exif[0x0112] = 6
    big = photo("coffee").resize((600, 400))
    big.save(tmp_path / "wide.jpg", quality=90, exif=exif.tobytes())      # shown 400 wide, 600 tall
    big.save(tmp_path / "wide.heic", quality=80)
    screen_task(TrainConfig(instance_data=str(tmp_path), instance_prompt="p", resolution=64))
    examples = {e.path.name: e for e in load_images(tmp_path, prompt="p", resolution=64, max_pixels=BIG)}
    assert examples["wide.jpg"].original_size == (600, 400) and examples["wide.jpg"].image.size == (64, 96)
    assert examples["wide.heic"].original_size == (400, 600) and examples["wide.heic"].image.size == (96, 64)
