"""A value pasted into the wrong field (an AWS key as a learning rate, a token as a path) is never
echoed into a reason: reasons name the field and the rule, and show a value only when it is short
and not shaped like a secret. fanout.redaction holds the rules; train and the container use them."""

from __future__ import annotations

import pytest

from fanout import hyperparameters as fanout_hp
from fanout import redaction as fanout_redaction
from fanout.tasks import parse_job_tasks
from train.config import TrainConfig
from train.errors import ConfigError

SECRETS = ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "ghp_1a2b3c4d5e6f7g8h9i0jklmnopqrstuv",
           "hf_abcdefghijklmnopqrstuvwxyz123456", "sk-proj-abc123def456ghi789", "xoxb-12345-67890-abcdef",
           "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "password=hunter2", "d41d8cd98f00b204e9800998ecf8427e")
PLAIN = ("fp8", "cosine_with_restarts", "alice/photos", "-1", 1e-4, 500, True, None, ["x"], "a photo of sks dog")


def test_every_secret_shape_is_recognised_and_plain_values_are_not():
    assert all(fanout_redaction.secret_shaped(s) for s in SECRETS)
    assert not any(fanout_redaction.secret_shaped(repr(v)) for v in PLAIN)


@pytest.mark.parametrize("secret", SECRETS)
def test_a_secret_in_a_hyperparameter_is_named_never_repeated(secret):
    for name in ("learning_rate", "rank", "mixed_precision", "export", "train_text_encoder"):
        problem = fanout_hp.value_problem(name, secret)
        assert problem and problem.startswith(f"{name}: ") and secret not in problem, problem
        assert "not shown" in problem
        with pytest.raises(ConfigError) as info:
            TrainConfig.from_dict({name: secret}, source="task 't1' (line 3)")
        message = str(info.value)
        assert secret not in message and name in message and "task 't1' (line 3)" in message, message


def test_short_plain_values_are_still_shown_so_the_user_can_fix_them():
    assert fanout_hp.value_problem("mixed_precision", "fp8") == "mixed_precision: 'fp8' is not one of no, fp16, bf16"
    assert fanout_hp.value_problem("resolution", "500") == "resolution: must be a multiple of 8, got 500"
    with pytest.raises(ConfigError, match="'abc' is not a valid number"):
        TrainConfig.from_dict({"learning_rate": "abc"})


def test_a_secret_in_a_task_lists_fields_is_not_repeated_in_its_problems():
    secret = SECRETS[0]
    text = ('{"task_id": "t1", "instance_data": "/%s", "instance_prompt": "p", "output_uri": "%s", '
            '"metadata": "%s", "%s": 1}\n' % (secret, secret, secret, secret))
    _, rejected = parse_job_tasks(text, source="tasks.jsonl")
    problems = " ".join(rejected["t1"])
    assert secret not in problems
    for field in ("instance_data", "output_uri", "metadata", "unknown field"):
        assert field in problems
