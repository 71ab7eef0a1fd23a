"""The task page in a real browser (Debian's chromium, offline): what a person sees is true and safe.

Strings from a task list, a request or a caption stay text; a file diffusers could not read
back never shows a diffusers reader as verified; the quality and screening sections appear
exactly when their data does (samples of the other branches' contracts: report_samples.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from page_checks import open_page
from report_samples import add_quality, add_screening, png

from report.task import write_task_page

HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
CURRENT = "diffusers 0.42.1 + transformers 5.23.0 + peft 0.21.2"
RELOAD = "FLUX.1's kohya copy of this width has no diffusers key map"


def task_folder(root: Path, *, state: str = "completed") -> Path:
    """A checkpoint folder as a task leaves it: status, metrics, previews, a model copy with a manifest."""
    ck = root / "checkpoints" / "t-1"
    status = {"task_id": "t-1", "user_id": f"mallory{HOSTILE}", "host": "algo-1", "state": state, "step": 40,
              "total_steps": 40, "loss": 0.12, "attempts": 2, "started_at": "2026-12-04T10:00:00Z",
              "finished_at": "2026-12-04T10:03:00Z", "error": f"DataError: caption {HOSTILE}" if state == "failed" else None,
              "timings": {"data": 1.5, "encoding": 0.5, "training": 120.0, "previews": 20.0, "export": 8.0, "upload": 2.0},
              "settings": {"instance_prompt": f"a photo of sks {HOSTILE}", "max_train_steps": 40, "rank": 8},
              "recipe": {"family": "flux", "variant": "dev", "from_recipe": {"rank": 8},
                         "sources": {"rank": "ai-toolkit train_lora_flux_24gb.yaml"}}}
    ck.mkdir(parents=True)
    (ck / "status.json").write_text(json.dumps(status))
    (ck / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-4, "seconds": s * 3.0})
                                              + "\n" for s in range(1, 41)))
    for step in (10, 20, 30, 40):
        index = []
        for i, prompt in enumerate(("a sks toy on a beach", f"a caption {HOSTILE}")):
            png(ck / "previews" / f"step-{step:06d}" / f"{i}.png", seed=step + i)
            index.append({"file": f"{i}.png", "prompt": prompt, "seed": 7 + i})
        (ck / "previews" / f"step-{step:06d}" / "prompts.json").write_text(json.dumps({"step": step, "images": index}))
    (ck / "log-tail.txt").write_text(f"task=t-1 step=40/40 loss=0.12\nlast line {HOSTILE}\n")
    if state == "completed":
        (ck / "final").mkdir()
        formats = {
            # issue 19's fields: what was checked for this file, and what the suite verifies
            "lora": {"status": "ok", "path": "pytorch_lora_weights.safetensors", "bytes": 3_200_000,
                     "load": "FluxPipeline.from_pretrained(BASE).load_lora_weights(MODEL_DIR)",
                     "verified": [{"reader": CURRENT, "how": "loaded back, rendered, drift 0.0/255"}],
                     "suite_verified": [{"reader": CURRENT}]},
            "kohya": {"status": "ok", "path": "lora_kohya.safetensors", "bytes": 3_300_000, "load": "...",
                      "reload": RELOAD, "verified": [{"reader": CURRENT, "how": "listed by mistake"},
                                                     {"reader": "ComfyUI key map", "how": "every key mapped"}],
                      "suite_verified": [{"reader": CURRENT}, {"reader": "ComfyUI key map"}]},
            # today's manifest: verified_readers is the format table's, whatever this file did
            "kohya-old": {"status": "ok", "path": "old.safetensors", "bytes": 10, "load": "...", "reload": RELOAD,
                          "verified_readers": [CURRENT, "ComfyUI / kohya-ss key maps (100% of keys)"]},
            "merged-nf4": {"status": "skipped", "reason": "needs a CUDA GPU"},
        }
        (ck / "final" / "manifest.json").write_text(json.dumps({"schema": 1, "formats": formats}))
    return ck


def test_strings_from_tasks_requests_and_captions_stay_text(chromium, tmp_path):
    ck = task_folder(tmp_path, state="failed")
    page = open_page(chromium, write_task_page(ck), screenshot="task-hostile-strings")
    assert page.problems() == []                     # the hostile <img src=x> was never an element
    assert page.page.evaluate("typeof window.pwned") == "undefined"
    assert page.scripts == 1                         # the page's own script, nothing injected
    assert page.text.count(HOSTILE) >= 4             # user, error, prompt, caption, log line: shown as text
    assert "Why it failed" in page.text and "last line" in page.page.inner_text("#log")
    assert page.images == 8                          # 2 prompts x 4 steps, every one decoded


def test_a_file_diffusers_could_not_read_never_lists_a_diffusers_reader_as_verified(chromium, tmp_path):
    page = open_page(chromium, write_task_page(task_folder(tmp_path)), screenshot="task-exports")
    rows = page.page.evaluate("Array.from(document.querySelectorAll('#exports tbody tr'))"
                              ".map(r => [r.cells[0].innerText, r.cells[5].innerText, r.cells[6].innerText])")
    verified = {name: (cell, suite) for name, cell, suite in rows}
    assert CURRENT in verified["lora"][0] and "loaded back" in verified["lora"][0]
    for name in ("kohya", "kohya-old"):
        cell, suite = verified[name]
        assert "could not read this file back" in cell and RELOAD in cell
        assert "diffusers 0.42" not in cell and "diffusers 0.42" not in suite
    assert "ComfyUI key map" in verified["kohya"][0]                      # what was checked still shows
    assert "ComfyUI / kohya-ss" not in verified["kohya-old"][0]           # the table's list is not a check
    assert "needs a CUDA GPU" in page.page.inner_text("#exports")
    assert "3.2 MB" in page.page.inner_text("#exports")


@pytest.mark.parametrize("extras", [False, True], ids=["without-quality", "with-quality-and-screening"])
def test_quality_and_screening_show_exactly_when_the_task_has_them(chromium, tmp_path, extras):
    ck = task_folder(tmp_path)
    if extras:
        add_quality(ck, "failed_quality")
        add_screening(ck)
    page = open_page(chromium, write_task_page(ck), screenshot=f"task-{'with' if extras else 'without'}-quality")
    assert page.problems() == []
    assert ("Quality" in page.text) is extras and ("Photo screening" in page.text) is extras
    if extras:
        quality = page.page.inner_text("#quality")
        assert "failed_quality" in quality and "0.61" in quality               # verdict and the DINO score
        assert "copies instance photo img3.jpg: 0.97" in page.text
        assert page.images == 8 + 4                                            # previews + evaluation images
        assert "near-duplicate of img1.jpg" in page.text and "1 dropped" in page.text
    else:
        assert page.images == 8
    for phase in ("data", "encoding", "training", "previews", "export", "upload"):
        assert phase in page.page.inner_text("#timings")
    assert page.page.locator("#loss-chart svg").count() == 1
    # a setting the family's recipe gave says so, with its source; one the task set does not
    rows = {r.split("\t")[0]: r for r in page.page.inner_text("#settings").splitlines()}
    assert "flux/dev recipe: ai-toolkit train_lora_flux_24gb.yaml" in rows["rank"]
    assert "recipe" not in rows["max_train_steps"]
