"""What the evaluation renders: prompts, seeds, steps and image count, resolved per task (pure).

The task's ``eval_*`` settings (TrainConfig) win; what they leave unset comes from the
instance prompt and from how the family samples the task's previews (steps, guidance,
resolution), which each family's recipe sets:

- the *subject* is the instance prompt without a leading "a photo of" ("sks dog"), its
  *rare token* the subject's first word when the subject has more ("sks"), and its *class*
  the rest ("dog"; "person" when nothing is left);
- subject images are the final previews whose prompt names the subject, plus the
  recontextualisation prompts (``{subject}`` replaced), ``eval_images_per_prompt`` each;
- drift pairs render the drift prompts (``{class}`` replaced), with and without the LoRA;
- image k of every prompt has seed ``derive_seed(eval_seed, "evaluation", k)``: the same
  evaluation set for every task, and the same base-model renders (cached per host).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from train.data import derive_seed

RECONTEXT_PROMPTS = ("a photo of {subject} on the beach", "a photo of {subject} in the snow")
DRIFT_PROMPTS = ("a photo of a {class} in a kitchen", "a photo of a {class} walking in a park")
LEADING = re.compile(r"^\s*(?:an?\s+)?(?:(?:photo|picture|image)\s+of\s+)?(?:(?:an?|the)\s+)?", re.IGNORECASE)
FALLBACK_CLASS = "person"


@dataclass(frozen=True)
class EvalSettings:
    family: str                       # the base's family: whose pipeline rendered the set
    subject: str                      # "sks dog"
    rare_token: str                   # "sks" (removed from CLIP-T's text), or ""
    class_noun: str                   # "dog"
    prompts: tuple[str, ...]          # recontextualisation prompts, filled in
    drift_prompts: tuple[str, ...]    # filled in
    images_per_prompt: int
    seeds: tuple[int, ...]            # seed of image k of every prompt
    steps: int
    guidance_scale: float
    resolution: int
    eval_seed: int

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def clip_text(self, prompt: str) -> str:
        """The prompt CLIP-T compares an image with: without the rare token, which CLIP never
        learned (it would score what "sks" means to CLIP, not what the prompt asks for)."""
        if not self.rare_token:
            return prompt
        return " ".join(re.sub(rf"(?<!\w){re.escape(self.rare_token)}(?!\w)", " ", prompt).split())

    def names_subject(self, prompt: str) -> bool:
        """Does ``prompt`` ask for the subject (a preview that can serve as a subject image)?"""
        token = self.rare_token or self.subject
        return bool(token) and re.search(rf"(?<!\w){re.escape(token)}(?!\w)", prompt) is not None


def subject_of(instance_prompt: str) -> str:
    return LEADING.sub("", instance_prompt, count=1).strip() or instance_prompt.strip()


def resolve(cfg, family_name: str, guidance_scale: float) -> EvalSettings:
    """The evaluation settings of task ``cfg`` on a base of family ``family_name``;
    ``guidance_scale`` is the task's preview guidance (passed through Family.sampling_kwargs)."""
    subject = cfg.eval_subject.strip() or subject_of(cfg.instance_prompt)
    words = subject.split()
    rare = cfg.eval_rare_token.strip() if cfg.eval_rare_token.strip() else (words[0] if len(words) > 1 else "")
    rest = " ".join(w for w in words if w != rare) if rare else ""
    class_noun = rest.strip(" ,") or FALLBACK_CLASS
    prompts = tuple(p.replace("{subject}", subject) for p in (cfg.eval_prompts or RECONTEXT_PROMPTS))
    drift = tuple(p.replace("{class}", class_noun) for p in (cfg.eval_drift_prompts or DRIFT_PROMPTS))
    # The previews' step count: what this family's sampler needs (a distilled variant's few steps).
    steps = cfg.eval_inference_steps or cfg.preview_inference_steps
    seeds = tuple(derive_seed(cfg.eval_seed, "evaluation", k) for k in range(cfg.eval_images_per_prompt))
    return EvalSettings(family=family_name, subject=subject, rare_token=rare, class_noun=class_noun, prompts=prompts,
                        drift_prompts=drift, images_per_prompt=cfg.eval_images_per_prompt, seeds=seeds,
                        steps=steps, guidance_scale=float(guidance_scale), resolution=cfg.resolution,
                        eval_seed=cfg.eval_seed)
