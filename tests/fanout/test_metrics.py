"""The metric regexes read the container's log line."""

from fanout.metrics import METRIC_DEFINITIONS, metric_definitions, read_metrics


def test_metric_definitions_read_the_log_line():
    line = "task=dog-1 step=120/400 loss=0.0734 lr=1e-04 it/s=3.21"
    assert read_metrics(line) == {"train:loss": 0.0734, "train:step": 120.0, "train:lr": 1e-4}
    names = [d["Name"] for d in METRIC_DEFINITIONS]
    assert names == ["train:loss", "train:step", "train:lr"]


def test_definitions_fit_sagemaker_limits_and_are_copies():
    defs = metric_definitions()
    defs[0]["Name"] = "changed"
    assert METRIC_DEFINITIONS[0]["Name"] == "train:loss"
    assert all(len(d["Name"]) <= 255 and len(d["Regex"]) <= 500 for d in METRIC_DEFINITIONS)
