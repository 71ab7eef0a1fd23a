"""Screening on real photographs (scikit-image's astronaut, cat and coffee): the face crop keeps
the face, a blurred copy is flagged and the original is not, a re-encoded copy is a
near-duplicate and the cat and the coffee are not, faces are counted per photo; and what
warn, drop and fail do with the findings, cheapest check first."""

from __future__ import annotations

import json

import pytest
from train_helpers import run_cli
from PIL import Image, ImageFilter
from photo_corpus import photo

from train.screen import Rules, ScreeningError, screen

BIG = 10**8


def save(folder, name, image, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / name, **kw)
    return folder / name


def verdicts(folder, **rules):
    from train.data import image_files

    result = screen(folder, image_files(folder), Rules(resolution=64, **rules))
    return result, {v.file: v for v in result.verdicts}


def checks(verdict) -> list[str]:
    return [f.check for f in verdict.findings]


def group_of_four():
    astronaut = photo("astronaut")
    group = Image.new("RGB", (1024, 1024))
    for x in (0, 512):
        for y in (0, 512):
            group.paste(astronaut, (x, y))
    return group


def test_the_face_crop_keeps_the_detected_face_where_the_centre_crop_cuts_it_off(tmp_path):
    from train.crops import Framing
    from train.data import crop_box, load_images
    from train.screen import face_boxes

    # A portrait photo with the face near the top: the astronaut above the coffee.
    portrait = Image.new("RGB", (512, 912))
    portrait.paste(photo("astronaut"), (0, 0))
    portrait.paste(photo("coffee").crop((0, 0, 512, 400)), (0, 512))
    path = save(tmp_path, "portrait.jpg", portrait, quality=92)
    faces = face_boxes([path], BIG)
    assert len(faces["portrait.jpg"]) == 1
    [example] = load_images(tmp_path, prompt="p", resolution=64, max_pixels=BIG,
                            framing=Framing("face", 64, faces=faces))
    top, left, bottom, right = crop_box(example, 64, center_crop=True)
    f_top, f_left, f_bottom, f_right = example.focus
    assert top <= f_top and f_bottom <= bottom and left <= f_left and f_right <= right, "the whole face is in"
    [plain] = load_images(tmp_path, prompt="p", resolution=64, max_pixels=BIG)
    c_top, _, c_bottom, _ = crop_box(plain, 64, center_crop=True)
    assert not (c_top <= f_top and f_bottom <= c_bottom), "the centre square would have cut the face off"
    # Drawn offsets (no center_crop) move the square but never off the face.
    import torch

    for seed in range(20):
        top, left, bottom, right = crop_box(example, 64, center_crop=False, rng=torch.Generator().manual_seed(seed))
        assert top <= f_top and f_bottom <= bottom


def test_a_gaussian_blurred_copy_is_flagged_and_the_originals_are_not(tmp_path):
    for name in ("astronaut", "chelsea", "coffee"):
        save(tmp_path, f"{name}.png", photo(name))
    save(tmp_path, "chelsea-shaky.png", photo("chelsea").filter(ImageFilter.GaussianBlur(2)))
    result, by_file = verdicts(tmp_path, checks=("blur",))
    assert {f for f, v in by_file.items() if v.findings} == {"chelsea-shaky.png"}
    [finding] = by_file["chelsea-shaky.png"].findings
    assert finding.check == "blur" and finding.value < finding.limit == 50.0 and "sharpness" in finding.message


def test_a_re_encoded_slightly_smaller_copy_is_a_near_duplicate_and_the_cat_and_coffee_are_not(tmp_path):
    for name in ("astronaut", "chelsea", "coffee"):
        save(tmp_path, f"{name}.png", photo(name))
    save(tmp_path, "astronaut-again.jpg", photo("astronaut").resize((480, 480)), quality=80)
    result, by_file = verdicts(tmp_path, checks=("duplicate",))
    assert {f for f, v in by_file.items() if v.findings} == {"astronaut-again.jpg"}, "the larger original is kept"
    [finding] = by_file["astronaut-again.jpg"].findings
    assert finding.check == "duplicate" and "astronaut.png" in finding.message and finding.value <= 8


def test_faces_are_counted_per_photo(tmp_path):
    from train.screen import measure

    expected = {"astronaut.png": 1, "group.jpg": 4, "chelsea.png": 0, "coffee.png": 0}
    for name in ("astronaut", "chelsea", "coffee"):
        save(tmp_path, f"{name}.png", photo(name))
    save(tmp_path, "group.jpg", group_of_four(), quality=90)
    assert {n: len(measure(tmp_path / n, BIG, faces=True).faces) for n in expected} == expected
    result, by_file = verdicts(tmp_path, checks=("faces",))
    assert {f for f, v in by_file.items() if v.findings} == {"group.jpg"}
    assert by_file["group.jpg"].findings[0].value == 4 and "learn the wrong person" in by_file["group.jpg"].findings[0].message


def test_warn_trains_on_all_drop_leaves_failing_photos_out_fail_refuses(tmp_path):
    for name in ("astronaut", "chelsea", "coffee"):
        save(tmp_path, f"{name}.png", photo(name))
    save(tmp_path, "astronaut-again.jpg", photo("astronaut").resize((500, 500)), quality=85)
    warned, by_file = verdicts(tmp_path, mode="warn")
    assert warned.kept_files == sorted(by_file) and checks(by_file["astronaut-again.jpg"]) == ["duplicate"]
    dropped, by_file = verdicts(tmp_path, mode="drop", min_images=3)
    assert dropped.kept_files == ["astronaut.png", "chelsea.png", "coffee.png"]
    record = dropped.to_dict()
    assert (record["kept"], record["dropped"]) == (3, 1)
    with pytest.raises(ScreeningError, match=r"would leave 3 of 4 photo\(s\), fewer than min_images=4; failing: "
                                             r"astronaut-again.jpg \(duplicate: a near-duplicate of astronaut.png"):
        verdicts(tmp_path, mode="drop", min_images=4)
    with pytest.raises(ScreeningError, match=r"screen=fail\) refused 1 of 4 photo\(s\): astronaut-again.jpg") as err:
        verdicts(tmp_path, mode="fail")
    images = err.value.status_fields["screening"]["images"]
    assert [i["file"] for i in images if not i["findings"]] == ["astronaut.png", "chelsea.png", "coffee.png"]


def test_cheapest_first_a_thumbnail_is_never_decoded_when_it_is_dropped(tmp_path):
    """A 40x40 PNG whose pixel data is cut off: its size (from the header) already fails the
    'small' check, so drop and fail never decode it; warn measures everything and hits it."""
    import io

    from train.errors import DataError

    for name in ("chelsea", "coffee"):
        save(tmp_path, f"{name}.png", photo(name))
    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(buf, "PNG")
    (tmp_path / "thumb.png").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])   # header intact, pixels cut
    result, by_file = verdicts(tmp_path, mode="drop")
    assert result.kept_files == ["chelsea.png", "coffee.png"]
    assert checks(by_file["thumb.png"]) == ["small"] and by_file["thumb.png"].findings[0].value == 40
    with pytest.raises(DataError, match="thumb.png: unreadable image"):
        verdicts(tmp_path, mode="warn")


def test_python_m_train_refuses_a_task_screening_fails_before_loading_the_model(tmp_path, tiny_model):
    data = tmp_path / "photos"
    for name in ("chelsea", "coffee"):
        save(data, f"{name}.png", photo(name))
    save(data, "chelsea-blurred.png", photo("chelsea").filter(ImageFilter.GaussianBlur(3)))
    out = tmp_path / "out"
    done = run_cli("--pretrained-model", str(tiny_model), "--instance-data", str(data), "--instance-prompt",
                   "a photo of sks cat", "--output-dir", str(out), "--resolution", "64", "--screen", "fail",
                   "--screen-checks", "small,blur", timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "chelsea-blurred.png (blur: sharpness" in done.stderr
    status = json.loads((out / "checkpoints" / "status.json").read_text())
    assert status["state"] == "failed" and "chelsea-blurred.png" in status["error"]
    assert (status["screening"]["mode"], status["screening"]["kept"], status["screening"]["dropped"]) == ("fail", 2, 1)
    assert [i["file"] for i in status["screening"]["images"] if i["findings"]] == ["chelsea-blurred.png"]
    assert not (out / "model").exists() and "resumed" not in done.stdout
