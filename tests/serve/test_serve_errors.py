"""What a caller gets wrong, through the real SD server: every error is JSON with its status and
a message that says what and where; a long render leaves /ping healthy; a burst of 100
requests with 10 bad ones leaves the other 90 right; the asynchronous path turns an input
object in S3 into its output object; a model registered in the models table is served by id."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from serving_helpers import BUCKET, CALL, TABLE, decode

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sd(serve_family):
    return serve_family("sd")


def post(url: str, body, **kwargs) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url + "/invocations", data=data, headers={"Content-Type": "application/json"},
                         timeout=120, **kwargs)


@pytest.fixture(scope="module")
def odd_models(sd, bases, aws):
    """Models that must be refused, uploaded beside the users' (S3) or put under the local root."""
    import torch

    root, s3 = sd.extra["root"] / "models", aws["s3"]
    (root / "garbage").mkdir()
    (root / "garbage" / "pytorch_lora_weights.safetensors").write_bytes(b"not a safetensors file" * 10)
    # a LoRA of another family (SDXL's own exporter wrote its manifest: family sdxl)
    from serving_helpers import export_lora
    sdxl = export_lora(bases["sdxl"], "sdxl", root / "sdxl-user")
    # the same SDXL LoRA without its manifest: caught by its layer shapes
    (root / "sdxl-bare").mkdir()
    (root / "sdxl-bare" / "pytorch_lora_weights.safetensors").write_bytes(
        (sdxl / "pytorch_lora_weights.safetensors").read_bytes())
    # over the size limit (1 MB): the user's LoRA plus 2 MB of padding
    big = {"unet.pad.lora_A.weight": torch.zeros(512, 1024)}
    s3.put_object(Bucket=BUCKET, Key="models/big/r1/pytorch_lora_weights.safetensors",
                  Body=_safetensors_bytes(big))
    return {"sdxl": "sdxl-user", "bare": "sdxl-bare", "garbage": "garbage", "big": f"s3://{BUCKET}/models/big/r1/"}


def _safetensors_bytes(state) -> bytes:
    from safetensors.torch import save

    return save(state)


def test_every_error_is_json_with_its_status_and_says_what(sd, odd_models):
    url, user = sd.server.url, next(iter(sd.names.values()))
    cases = [
        (b"{not json", 400, "not JSON"),
        (b"[1, 2]", 400, "not an object"),
        ({**CALL, "model": f"s3://{BUCKET}/models/nobody/r1/"}, 404, "does not exist"),
        ({**CALL, "model": "nobody/r9"}, 404, "no model 'r9' of user 'nobody' in the models table"),
        ({**CALL, "model": "./no-such-folder"}, 404, "does not exist"),
        ({**CALL, "model": "s3://other-bucket/models/u/r/"}, 422, "outside the S3 prefixes"),
        ({**CALL, "model": "../../etc"}, 422, "outside the models folder"),
        ({**CALL, "model": odd_models["sdxl"]}, 422, "trained on a sdxl base"),
        ({**CALL, "model": "./" + odd_models["bare"]}, 422, "a LoRA made for another base"),
        ({**CALL, "model": "./" + odd_models["garbage"]}, 422, "is not a sd LoRA diffusers can read"),
        ({**CALL, "model": odd_models["big"]}, 413, "over this server's limit of 1.0 MB"),
        ({**CALL, "model": user, "num_inference_steps": 0, "height": 33, "bogus": 1, "output_format": "gif",
          "seed": -1, "guidance_scale": "high"}, 422, None),
        ({"prompt": "no model"}, 422, "model: required"),
        (b"x" * (1024 * 1024 + 1), 413, "over the 1048576 accepted"),
    ]
    for body, status, words in cases:
        answer = post(url, body)
        assert answer.status_code == status, (body if len(body) < 300 else "big body", answer.text)
        assert answer.headers["content-type"] == "application/json"
        message = answer.json()["error"]
        if words:
            assert words in message, message
    bad_options = post(url, cases[11][0]).json()["error"]
    for field in ("num_inference_steps: 0 is outside 1..100", "height: 33 is not a multiple of", "bogus",
                  "output_format: 'gif'", "seed: -1 is outside", "guidance_scale: expected a number"):
        assert field in bad_options, bad_options
    # the server is still fine, and serves the user right
    answer = post(url, {**CALL, "model": user})
    assert answer.status_code == 200
    assert np.array_equal(decode(answer.json()["images"][0]), sd.references[next(iter(sd.names))])


def test_an_adapter_over_the_rank_limit_is_refused_with_the_reason(sd):
    import torch
    from safetensors.torch import load_file, save_file

    folder = next(iter(sd.users.values()))
    state = load_file(str(folder / "pytorch_lora_weights.safetensors"))
    down = ("lora_A.weight", "lora.down.weight", "lora_down.weight")
    wide = {k: torch.cat([v, v], dim=0 if k.endswith(down) else 1) if v.ndim == 2 else v
            for k, v in state.items() if k.startswith("unet")}
    out = sd.extra["root"] / "models" / "rank8"
    out.mkdir()
    save_file(wide, str(out / "pytorch_lora_weights.safetensors"))
    answer = post(sd.server.url, {**CALL, "model": "./rank8"})
    assert answer.status_code == 422
    assert "rank 8 is over this server's hotswap target rank 4" in answer.json()["error"]


def test_a_prompt_over_the_tokenizer_limit_is_truncated_and_the_answer_says_so(sd):
    user = next(iter(sd.names))
    long_prompt = "a photo of sks toy " + "on a very long table " * 10
    answer = post(sd.server.url, {**CALL, "model": sd.names[user], "prompt": long_prompt})
    assert answer.status_code == 200
    [warning] = answer.json()["warnings"]
    assert "which reads 77: truncated as the pipeline does" in warning
    short = post(sd.server.url, {**CALL, "model": sd.names[user]}).json()
    assert short["warnings"] == []


def test_ping_stays_healthy_while_a_long_render_runs(sd):
    user = next(iter(sd.names.values()))
    long = threading.Thread(target=post, args=(sd.server.url, {**CALL, "model": user, "num_inference_steps": 25,
                                                               "height": 64, "width": 64, "num_images": 2}))
    long.start()
    time.sleep(0.5)
    pings = []
    while long.is_alive() and len(pings) < 20:
        pings.append(requests.get(sd.server.url + "/ping", timeout=2).status_code)  # SageMaker's ping timeout
        time.sleep(0.1)
    long.join()
    assert pings and set(pings) == {200}


def test_a_burst_of_100_with_10_malformed_leaves_the_other_90_right(sd, odd_models):
    names = list(sd.names)
    rng = random.Random(7)
    bad = [b"{oops", {**CALL, "model": f"s3://{BUCKET}/models/ghost/r1/"}, {**CALL, "model": "./garbage"},
           {**CALL, "model": names[0], "num_inference_steps": -3}, {"model": names[0]},
           {**CALL, "model": "./" + odd_models["bare"]}, {**CALL, "model": odd_models["big"]},
           {**CALL, "model": sd.names[names[1]], "width": 31}, b"null", {**CALL, "model": "ghost/r2"}]
    jobs = [("good", u) for u in rng.choices(names, k=90)] + [("bad", b) for b in bad]
    rng.shuffle(jobs)

    def run(job):
        kind, what = job
        return kind, what, post(sd.server.url, {**CALL, "model": sd.names[what]} if kind == "good" else what)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, jobs))
    good = [(u, r) for kind, u, r in results if kind == "good"]
    assert [r.status_code for _, r in good] == [200] * 90
    for user, answer in good:
        assert np.array_equal(decode(answer.json()["images"][0]), sd.references[user]), user
    failed = [r for kind, _, r in results if kind == "bad"]
    assert all(400 <= r.status_code < 500 and r.json()["error"] for r in failed)


def test_async_endpoint_path_turns_an_input_object_into_its_output_object(sd, aws):
    """What a SageMaker asynchronous endpoint does around the container: the input object is
    posted to /invocations unchanged and the answer written to the output location."""
    s3 = aws["s3"]
    user = next(iter(sd.names))
    s3.put_object(Bucket=BUCKET, Key="async/in/req-1.json", Body=json.dumps({**CALL, "model": sd.names[user]}).encode())
    s3.put_object(Bucket=BUCKET, Key="async/in/req-2.json", Body=json.dumps({**CALL, "model": "ghost/r1"}).encode())
    for name in ("req-1", "req-2"):
        invoke_async(s3, sd.server.url, f"s3://{BUCKET}/async/in/{name}.json", f"s3://{BUCKET}/async/out/",
                     f"s3://{BUCKET}/async/failures/", name)
    out = json.loads(s3.get_object(Bucket=BUCKET, Key="async/out/req-1.out")["Body"].read())
    assert np.array_equal(decode(out["images"][0]), sd.references[user])
    failure = json.loads(s3.get_object(Bucket=BUCKET, Key="async/failures/req-2-error.out")["Body"].read())
    assert "no model 'r1' of user 'ghost'" in failure["error"]


def invoke_async(s3, url: str, input_uri: str, output_uri: str, failure_uri: str, inference_id: str) -> None:
    """SageMaker's async platform, reduced to what it does with the objects: read the input
    location, POST it to the container, write <id>.out to the output (or failure) location."""
    bucket, key = input_uri[5:].split("/", 1)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    answer = post(url, body)
    target = output_uri if answer.ok else failure_uri
    out_bucket, prefix = target[5:].split("/", 1)
    s3.put_object(Bucket=out_bucket, Key=f"{prefix}{inference_id}{'' if answer.ok else '-error'}.out",
                  Body=answer.content, ContentType="application/json")


def test_a_model_registered_by_the_serverless_path_is_served_by_its_id(sd, aws):
    """on_task_artifact records family, base and adapter URI in the models table item; the app
    then names the model as <user_id>/<model_id> only."""
    from fanout.store import ModelStore

    user = next(iter(sd.names))
    store = ModelStore(aws["dynamodb"], TABLE)
    store.register("alice", "r1", "2026-12-04T00:00:00Z", artifact_uri=sd.names[user], family="sd",
                   adapter_uri=sd.names[user] + "pytorch_lora_weights.safetensors", base_model="s3://b/base/")
    store.register("bob", "r1", "2026-12-04T00:00:00Z", artifact_uri=sd.names[user], family="flux",
                   adapter_uri=sd.names[user] + "pytorch_lora_weights.safetensors")
    answer = post(sd.server.url, {**CALL, "model": "alice/r1"})
    assert answer.status_code == 200 and np.array_equal(decode(answer.json()["images"][0]), sd.references[user])
    wrong = post(sd.server.url, {**CALL, "model": "bob/r1"})
    assert wrong.status_code == 422 and "trained on a flux base (the models table)" in wrong.json()["error"]
