"""The identity score on real photos: OpenCV's detectors, the aligned 112x112 crop, the ONNX
embedder, leave-one-out over the upload, and images without a face (null with the reason).

The face is scikit-image's astronaut photo (Eileen Collins, NASA, public domain), shipped in
its wheel; the embedder is the tiny random ONNX model of scripts/make_tiny_scorers.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from scripts_loader import load_script

skimage = pytest.importorskip("skimage")
ASTRONAUT = Path(skimage.__file__).parent / "data" / "astronaut.png"
NO_FACE = Path(skimage.__file__).parent / "data" / "coffee.png"
PROMPT = "a photo of sks woman"


def faces_of(folder: Path):
    from train.quality.faces import FaceModels, read_layout

    return FaceModels(read_layout(folder))


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    """Three instance photos: the astronaut, the same photo mirrored and shifted, a cup of coffee."""
    from PIL import Image, ImageOps

    root = tmp_path_factory.mktemp("upload")
    shutil.copyfile(ASTRONAUT, root / "a-astronaut.png")
    with Image.open(ASTRONAUT) as im:
        ImageOps.mirror(im).crop((20, 10, 500, 500)).save(root / "b-mirrored.jpg", quality=95)
    shutil.copyfile(NO_FACE, root / "c-coffee.png")
    return sorted(root.iterdir())


@pytest.fixture(scope="module")
def settings():
    from train.config import TrainConfig
    from train.quality.settings import resolve

    return resolve(TrainConfig(instance_prompt=PROMPT, resolution=32), "sd", 7.5)


def test_opencvs_cascade_finds_the_real_face_and_the_crop_is_embedded_normalised(tiny_scorers):
    from PIL import Image

    face = faces_of(tiny_scorers / "face")
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    found = face.detect(rgb)
    assert len(found) == 1
    x, y, w, h = found[0].box
    assert 150 < x + w / 2 < 300 and 60 < y + h / 2 < 200          # her face, not the flag or the suit
    crop = face.align(rgb, found[0])
    assert crop.shape == (112, 112, 3)
    count, embedding = face.largest_face_embedding(rgb)
    assert count == 1 and np.linalg.norm(embedding) == pytest.approx(1.0)
    assert face.detect(np.asarray(Image.open(NO_FACE).convert("RGB"))) == []


def test_identity_is_the_cosine_to_the_centroid_of_the_uploads_faces(tiny_scorers, upload, settings, tmp_path):
    """Scored from files; photos without a face are listed, not used; leave-one-out per photo."""
    from train.quality import load_scorers
    from train.quality.scores import Image, compute

    scorers = load_scorers(tiny_scorers)
    shutil.copyfile(upload[1], tmp_path / "subject-0.png")          # a generated image with her face
    shutil.copyfile(NO_FACE, tmp_path / "subject-1.png")             # and one without a face
    images = [Image(tmp_path / f"subject-{k}.png", PROMPT, k, "subject") for k in range(2)]
    result = compute(scorers, images, upload, settings)

    assert result.scores["faces_per_image"] == [1, 0]
    face = faces_of(tiny_scorers / "face")
    emb = {p.name: face.largest_face_embedding(_rgb(p))[1] for p in upload[:2]}
    centroid = (emb["a-astronaut.png"] + emb["b-mirrored.jpg"]) / np.linalg.norm(emb["a-astronaut.png"] + emb["b-mirrored.jpg"])
    assert result.scores["identity"] == pytest.approx(float(emb["b-mirrored.jpg"] @ centroid), abs=1e-4)
    pairwise = float(emb["a-astronaut.png"] @ emb["b-mirrored.jpg"])   # with two faces, the "others" is one face
    assert result.photos == [{"file": "a-astronaut.png", "faces": 1, "identity_loo": pytest.approx(pairwise, abs=1e-4)},
                             {"file": "b-mirrored.jpg", "faces": 1, "identity_loo": pytest.approx(pairwise, abs=1e-4)},
                             {"file": "c-coffee.png", "faces": 0, "identity_loo": None}]


def _rgb(path):
    from train.quality.scores import read_rgb

    return np.asarray(read_rgb(path))


def test_no_face_in_any_image_records_null_with_the_reason_never_a_crash(tiny_scorers, upload, settings, tmp_path):
    from train.quality import load_scorers
    from train.quality.gate import judge
    from train.quality.scores import Image, compute

    rng = np.random.default_rng(1)
    images = []
    for k in range(3):
        from PIL import Image as PILImage

        PILImage.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"subject-{k}.png")
        images.append(Image(tmp_path / f"subject-{k}.png", PROMPT, k, "subject"))
    result = compute(load_scorers(tiny_scorers), images, upload, settings)
    assert result.scores["identity"] is None and result.scores["faces_per_image"] == [0, 0, 0]
    assert result.unmeasured["identity"] == "no face found in any of the 3 subject images"
    assert result.scores["dino"] is not None                            # the other scores still there
    verdict, reasons = judge(result.scores, {"identity": 0.3}, unmeasured=result.unmeasured)
    assert verdict == "needs_review" and reasons == ["identity not measured: no face found in any of the 3 subject images"]


def test_the_yunet_layout_runs_through_opencv_and_aligns_on_its_landmarks(tmp_path):
    """A YuNet-format detector (random weights: every cell a face, or none) through
    cv2.FaceDetectorYN; landmarks warp onto the ArcFace template."""
    from train.quality.faces import TEMPLATE, Face, check_models, read_layout

    builder = load_script("make_tiny_scorers")
    rgb = np.asarray(_rgb(ASTRONAUT))
    everywhere = builder.build_face(tmp_path / "every" / "face", "yunet", yunet_bias=8.0)
    check_models(read_layout(everywhere))
    face = faces_of(everywhere)
    found = face.detect(rgb)
    assert found and found[0].landmarks.shape == (5, 2)
    count, embedding = face.largest_face_embedding(rgb)
    assert count == len(found) and embedding.shape == (16,)
    assert faces_of(builder.build_face(tmp_path / "never" / "face", "yunet", yunet_bias=-8.0)).detect(rgb) == []
    # Landmarks already on the template: the aligned crop is the image itself.
    square = np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    aligned = face.align(square, Face((0, 0, 112, 112), 1.0, np.asarray(TEMPLATE)))
    assert np.abs(aligned.astype(int) - square.astype(int))[2:-2, 2:-2].mean() < 1.0


def test_a_face_folder_that_cannot_work_is_refused_naming_the_file(tmp_path):
    from train.quality.faces import FaceFolderError, check_models, read_layout

    builder = load_script("make_tiny_scorers")
    folder = builder.build_face(tmp_path / "face", "yunet")
    shutil.copyfile(folder / "detector.onnx", folder / "embedder.onnx")   # a detector is no embedder
    with pytest.raises(FaceFolderError, match=r"face/embedder.onnx takes .*\(N, 3, 112, 112\)"):
        check_models(read_layout(folder))
    (folder / "detector.onnx").unlink()
    with pytest.raises(FaceFolderError, match=r"face/ has no detector file \(detector.onnx or detector.xml\)"):
        read_layout(folder)
