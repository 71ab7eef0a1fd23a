"""The stack check's routing rules (EventBridge patterns, S3 filters) on plain values."""

from __future__ import annotations

import pytest
from scripts_loader import load_script

check_stack = load_script("check_stack")
# the module's pattern for name_prefix "fanout" (functions.tf); test_stack checks the deployed one
RULE = {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Training Job State Change"],
        "detail": {"TrainingJobStatus": ["Completed", "Failed", "Stopped"], "TrainingJobName": [{"prefix": "fanout-"}]}}


@pytest.mark.parametrize("status", ["Completed", "Failed", "Stopped"])
def test_the_job_state_pattern_takes_this_stacks_ended_jobs(status):
    assert check_stack.pattern_matches(RULE, check_stack.job_event("fanout-0123456789abcdef", status, "b"))


@pytest.mark.parametrize("job, status", [("fanout-0123456789abcdef", "InProgress"), ("other-0123", "Completed"),
                                         ("fanou-0123", "Failed")])
def test_the_job_state_pattern_leaves_other_events_alone(job, status):
    assert not check_stack.pattern_matches(RULE, check_stack.job_event(job, status, "b"))


def test_pattern_operators_and_unknown_ones():
    event = {"source": "aws.s3", "detail": {"size": 3, "tags": ["a", "b"]}}
    assert check_stack.pattern_matches({"detail": {"tags": ["b"]}}, event)                 # any array element
    assert check_stack.pattern_matches({"detail": {"missing": [{"exists": False}]}}, event)
    assert not check_stack.pattern_matches({"detail": {"size": [{"anything-but": [3]}]}}, event)
    assert not check_stack.pattern_matches({"nested": {"x": ["y"]}}, event)
    with pytest.raises(ValueError, match="'numeric' is not supported"):
        check_stack.pattern_matches({"detail": {"size": [{"numeric": [">", 1]}]}}, event)


def test_s3_filters_and_events_as_the_handlers_read_them():
    note = {"Filter": {"Key": {"FilterRules": [{"Name": "Prefix", "Value": "requests/"},
                                              {"Name": "Suffix", "Value": "/request.json"}]}}}
    assert check_stack.filter_accepts(note, "requests/u@x.com/r 1/request.json")
    assert not check_stack.filter_accepts(note, "requests/u/r/images/request.json.jpg")
    from fanout.events import s3_objects
    [obj] = s3_objects(check_stack.s3_event("b", "requests/u@x.com/r 1/request.json"))
    assert obj.key == "requests/u@x.com/r 1/request.json"                                  # URL-encoded on the wire, decoded by the handler
