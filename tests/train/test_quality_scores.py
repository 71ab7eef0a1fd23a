"""The evaluation's scores, each against an independent computation, and the gate's verdicts.

The tiny scorers (tests/conftest.py: tiny_scorers) have random weights, so the numbers mean
nothing, but they are the real classes: a formula that differs from its definition shows.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

PROMPT = "a photo of sks toy"


@pytest.fixture(scope="module")
def settings():
    from train.config import TrainConfig
    from train.quality.settings import resolve

    return resolve(TrainConfig(instance_prompt=PROMPT, resolution=32), "sd", 7.5)


def photos_of(demo_data):
    from train.data import image_files

    return image_files(demo_data / "instance")


def independent(folder, images, texts=()):
    """CLIP image / text and DINO CLS embeddings straight from transformers, normalised by torch."""
    from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor

    from train.quality.scores import read_rgb

    pil = [read_rgb(p) for p in images]
    clip, processor = CLIPModel.from_pretrained(folder / "clip"), CLIPProcessor.from_pretrained(folder / "clip")
    dino, dino_processor = AutoModel.from_pretrained(folder / "dino"), AutoImageProcessor.from_pretrained(folder / "dino")
    with torch.no_grad():
        c = clip.get_image_features(pixel_values=processor(images=pil, return_tensors="pt").pixel_values).pooler_output
        d = dino(pixel_values=dino_processor(images=pil, return_tensors="pt").pixel_values).last_hidden_state[:, 0]
        t = clip.get_text_features(**processor(text=list(texts), return_tensors="pt", padding=True)).pooler_output \
            if texts else None
    norm = torch.nn.functional.normalize
    return norm(c, dim=-1), norm(d, dim=-1), (norm(t, dim=-1) if t is not None else None)


def test_an_image_compared_with_itself_scores_one(scorers, settings, demo_data, tmp_path):
    from train.quality.scores import Image, compute

    photo = photos_of(demo_data)[0]
    generated = tmp_path / "subject-0.png"
    shutil.copyfile(photo, generated)
    result = compute(scorers, [Image(generated, PROMPT, 0, "subject")], [photo], settings)
    assert result.scores["dino"] == pytest.approx(1.0, abs=1e-4)
    assert result.scores["clip_i"] == pytest.approx(1.0, abs=1e-4)
    assert result.scores["copying"] == pytest.approx(1.0, abs=1e-4)
    assert result.nearest["photo"] == photo.name


def test_subject_and_prompt_scores_equal_their_definitions(scorers, settings, tiny_scorers, demo_data, tmp_path):
    """DINO / CLIP-I: mean pairwise cosine generated x real; CLIP-T: cosine to the prompt
    without the rare token; copying: the highest DINO cosine, with its photo."""
    from PIL import Image as PILImage

    from train.quality.scores import Image, compute

    photos = photos_of(demo_data)
    rng = np.random.default_rng(0)
    generated = []
    for k, prompt in enumerate((f"{PROMPT} on the beach", f"{PROMPT} in the snow")):
        path = tmp_path / f"subject-{k}.png"
        PILImage.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(path)
        generated.append(Image(path, prompt, k, "subject"))
    result = compute(scorers, generated, photos, settings)

    clip_g, dino_g, text = independent(tiny_scorers, [g.path for g in generated],
                                       ["a photo of toy on the beach", "a photo of toy in the snow"])
    clip_r, dino_r, _ = independent(tiny_scorers, photos)
    cos = torch.nn.functional.cosine_similarity
    pairs = [(i, j) for i in range(len(generated)) for j in range(len(photos))]
    dino_sims = [float(cos(dino_g[i], dino_r[j], dim=0)) for i, j in pairs]
    assert result.scores["dino"] == pytest.approx(np.mean(dino_sims), abs=1e-4)
    assert result.scores["clip_i"] == pytest.approx(np.mean([float(cos(clip_g[i], clip_r[j], dim=0))
                                                             for i, j in pairs]), abs=1e-4)
    assert result.scores["clip_t"] == pytest.approx(np.mean([float(cos(clip_g[i], text[i], dim=0))
                                                             for i in range(2)]), abs=1e-4)
    assert result.scores["copying"] == pytest.approx(max(dino_sims), abs=1e-4)
    assert result.nearest["photo"] == photos[pairs[int(np.argmax(dino_sims))][1]].name


def test_a_training_photo_fed_back_as_a_generated_image_is_flagged_as_copying(scorers, settings, demo_data, tmp_path):
    from train.quality.gate import judge
    from train.quality.scores import Image, compute

    photos = photos_of(demo_data)
    images = []
    for k, source in enumerate((photos[1], photos[0])):   # the model "returns" a training photo
        shutil.copyfile(source, tmp_path / f"subject-{k}.png")
        images.append(Image(tmp_path / f"subject-{k}.png", PROMPT, k, "subject"))
    result = compute(scorers, images, photos, settings)
    verdict, reasons = judge(result.scores, {"copying": 0.95}, nearest_photo=result.nearest["photo"])
    assert verdict == "failed_quality"
    assert reasons[0].startswith(f"copies instance photo {result.nearest['photo']}: 1.00 > 0.95")
    assert result.nearest["photo"] in (photos[0].name, photos[1].name)


def _random_lora(base, scale: float, seed: int = 0) -> None:
    """Give the attached LoRA non-zero weights (its B starts at zero), then scale it."""
    from peft.tuners.lora import LoraLayer

    g = torch.Generator().manual_seed(seed)
    for module in base.unet.modules():
        if isinstance(module, LoraLayer):
            with torch.no_grad():
                for name in module.lora_B:
                    w = module.lora_B[name].weight
                    w.copy_(torch.randn(w.shape, generator=g) * 0.5)
                    module.scaling[name] = scale


def test_a_lora_scaled_to_zero_has_drift_zero_and_a_real_one_drifts(base, scorers, settings, tmp_path):
    from train.config import TrainConfig
    from train.pipeline import attach_lora, detach_lora
    from train.quality.render import render_set
    from train.quality.scores import compute, paired_drift

    cache: dict = {}
    fast = settings.__class__(**{**settings.__dict__, "steps": 2, "prompts": ()})
    try:
        attach_lora(base, TrainConfig(rank=4))
        drift = {}
        for scale in (0.0, 1.0):
            _random_lora(base, scale)
            out = tmp_path / f"scale-{scale}"
            out.mkdir()
            images = render_set(base, fast, out, cache)
            drift[scale] = (compute(scorers, images, [], fast).scores["drift"], images)
    finally:
        detach_lora(base)
    assert drift[0.0][0] == 0.0
    assert drift[1.0][0] > 0.001
    # The base renders are the same files both times (rendered once, then from the host's cache).
    base0 = [im.path.read_bytes() for im in drift[0.0][1] if im.kind == "drift_base"]
    assert base0 == [im.path.read_bytes() for im in drift[1.0][1] if im.kind == "drift_base"] and len(cache) == 2
    # (1 - cos) / 2 of the DINO embeddings, averaged over the pairs, by an independent formula.
    pairs = [im for im in drift[1.0][1] if im.kind != "subject"]
    b = scorers.dino_images([_rgb(p.path) for p in pairs if p.kind == "drift_base"])
    lora = scorers.dino_images([_rgb(p.path) for p in pairs if p.kind == "drift_lora"])
    expected = np.mean([(1 - float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y))) / 2 for x, y in zip(b, lora)])
    assert drift[1.0][0] == pytest.approx(expected, abs=1e-4) == pytest.approx(paired_drift(b, lora), abs=1e-4)


def _rgb(path):
    from train.quality.scores import read_rgb

    return read_rgb(path)


def test_the_evaluation_set_is_derived_from_the_instance_prompt():
    from train.config import TrainConfig
    from train.quality.settings import resolve

    s = resolve(TrainConfig(instance_prompt="a photo of a sks dog", eval_images_per_prompt=2), "sdxl", 5.0)
    assert (s.subject, s.rare_token, s.class_noun) == ("sks dog", "sks", "dog")
    assert s.prompts == ("a photo of sks dog on the beach", "a photo of sks dog in the snow")
    assert s.drift_prompts == ("a photo of a dog in a kitchen", "a photo of a dog walking in a park")
    assert len(s.seeds) == 2 and len(set(s.seeds)) == 2 and s.steps == 20 and s.guidance_scale == 5.0
    assert s.clip_text("a photo of sks dog on the beach") == "a photo of dog on the beach"
    assert s.names_subject("sks dog, oil painting") and not s.names_subject("a photo of a dog, sksx")
    custom = resolve(TrainConfig(instance_prompt="ohwx", eval_prompts=("{subject} reading",), eval_seed=3,
                                 eval_inference_steps=7), "z-image", 1.0)
    assert (custom.rare_token, custom.class_noun, custom.prompts, custom.steps) == ("", "person", ("ohwx reading",), 7)
    assert custom.seeds != s.seeds[:1] and custom.clip_text("ohwx reading") == "ohwx reading"


@pytest.mark.parametrize("scores, gate, verdict, first_reason", [
    ({"dino": 0.41}, {}, "passed", "no quality_gate set: the scores are reported, not judged"),
    ({"dino": 0.41, "clip_t": 0.3}, {"dino": 0.55, "clip_t": 0.25}, "failed_quality", "subject DINO 0.41 < 0.55"),
    ({"drift": 0.31}, {"drift": 0.2}, "failed_quality", "drift 0.31 > 0.20"),
    ({"drift": 0.11, "dino": 0.7}, {"drift": 0.2, "dino": 0.6}, "passed", "every gated score within its limit"),
    ({"identity": None}, {"identity": 0.4}, "needs_review", "identity not measured: no face"),
])
def test_the_gate_gives_the_verdict_and_says_why(scores, gate, verdict, first_reason):
    from train.quality.gate import judge

    got, reasons = judge(scores, gate, unmeasured={"identity": "no face found in any of the 3 subject images"})
    assert got == verdict and reasons[0].startswith(first_reason)


def test_a_photo_of_somebody_else_in_the_upload_needs_review():
    from train.quality.gate import judge

    photos = [{"file": "a.jpg", "identity_loo": 0.8}, {"file": "img3.jpg", "identity_loo": 0.12}]
    verdict, reasons = judge({"identity": 0.7}, {"identity": 0.5}, instance_photos=photos)
    assert verdict == "needs_review"
    assert reasons == ["instance photo img3.jpg may show somebody else: its face matches the others' 0.12 < 0.50"]


@pytest.mark.parametrize("value, message", [
    ('{"dino": 0.5, "sharpness": 1}', "unknown score(s) 'sharpness'; valid: dino, clip_i, clip_t, drift, copying"),
    ('{"dino": "high"}', "dino: the limit must be a number"),
    ('{"copying": 1.5}', "between -1 and 1"),
    ("[0.5]", "not a valid JSON object"),
])
def test_a_bad_quality_gate_is_refused_naming_the_field_and_what_is_valid(value, message):
    from train.config import TrainConfig
    from train.errors import ConfigError

    with pytest.raises(ConfigError, match="quality_gate") as info:
        TrainConfig.from_dict({"quality_gate": value}, source="task 't1'")
    assert message in str(info.value) and "task 't1'" in str(info.value)


def test_the_gate_arrives_as_sagemaker_strings_or_a_json_object():
    from train.config import TrainConfig

    sdk = TrainConfig.from_dict({"quality_gate": '"{\\"dino\\": 0.55}"', "on_quality_fail": '"retry"'})
    raw = TrainConfig.from_dict({"quality_gate": '{"dino": 0.55}'})
    typed = TrainConfig.from_dict({"quality_gate": {"dino": 0.55}})
    assert sdk.quality_gate == raw.quality_gate == typed.quality_gate == {"dino": 0.55}
    assert sdk.on_quality_fail == "retry" and TrainConfig().quality_gate == {} and TrainConfig().on_quality_fail == "keep"
