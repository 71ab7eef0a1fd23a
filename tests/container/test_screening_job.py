"""A task whose photos screening refuses fails alone, before the host's base model is touched,
with the findings in its status.json; the next task loads the base and trains."""

from __future__ import annotations

import shutil

from container.records import read_json
from test_worker import FakeTrain, _job, _run, _summary, _tasks
from train.api import LocalTrainer


class ScreeningTrain(FakeTrain):
    """The real screening (train.api.LocalTrainer.screen), the stand-in model and training."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def screen(self, cfg, *, task_id):
        self.events.append(f"screen:{task_id}")
        return LocalTrainer().screen(cfg, task_id=task_id)

    def load_base(self, model_dir):
        self.events.append("load_base")
        return super().load_base(model_dir)

    def run_task(self, base, cfg, **kwargs):
        self.events.append(f"run:{kwargs['task_id']}")
        return super().run_task(base, cfg, **kwargs)


def test_a_task_screening_refuses_fails_alone_before_the_base_model_loads(tmp_path, image_root, monkeypatch):
    from PIL import Image

    images = tmp_path / "images"
    shutil.copytree(image_root / "alice", images / "alice")
    shutil.copytree(image_root / "bob", images / "twice")
    first = sorted((images / "twice").glob("*.png"))[0]
    Image.open(first).convert("RGB").resize((38, 38)).save(images / "twice" / "again.jpg", quality=85)
    tasks = _tasks("twice", "ok")
    tasks[0].update(instance_data="twice", hyperparameters={"screen": "fail"})
    # Alone on a host: refused, and the base model is never loaded.
    (tmp_path / "alone").mkdir()
    alone = _job(tmp_path / "alone", images, tasks[:1], hp={"max_train_steps": 3, "resolution": 32})
    fake = ScreeningTrain()
    assert _run(monkeypatch, alone, fake) == 0
    assert fake.events == ["screen:twice"] and _summary(alone)["base_model_loads"] == 0
    # With another task: that one trains.
    base = _job(tmp_path, images, tasks, hp={"max_train_steps": 3, "resolution": 32})
    fake = ScreeningTrain()
    assert _run(monkeypatch, base, fake) == 0
    assert sorted(fake.events) == ["load_base", "run:ok", "screen:ok", "screen:twice"]
    outcomes = {t["task_id"]: t for t in _summary(base)["tasks"]}
    assert outcomes["ok"]["outcome"] == "completed" and outcomes["twice"]["outcome"] == "failed"
    assert "again.jpg (duplicate: a near-duplicate of " + first.name in outcomes["twice"]["error"]
    status = read_json(base / "checkpoints" / "twice" / "status.json")
    assert status["state"] == "failed" and status["host"] == "algo-1"
    screening = status["screening"]
    assert (screening["mode"], screening["kept"], screening["dropped"]) == ("fail", len(screening["images"]) - 1, 1)
    [refused] = [i for i in screening["images"] if not i["kept"]]
    assert refused["file"] == "again.jpg" and refused["findings"][0]["check"] == "duplicate"
    assert not (base / "model" / "twice").exists()
