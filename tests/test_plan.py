import pytest
from plan_factory import consistent_plan

from planner.config import TrainConfig
from planner.errors import PlannerError
from planner.plan import Breakdown, Plan, ProxyInfo


def _fields(**kw):
    base = dict(
        model="tiny-llama",
        model_type="llama",
        num_layers=4,
        layers_attribute="model.layers",
        active_layers=2,
        period=5,
        scorer="uniform",
        learning_rate=1e-4,
        train=TrainConfig(active_layers=2),
        predicted_peak_bytes=10,
        breakdown=Breakdown(weights=6, activations=4),
    )
    base.update(kw)
    return base


def test_plan_round_trips(tmp_path):
    plan = consistent_plan(**_fields())
    path = plan.save(tmp_path / "p.yaml")
    assert Plan.load(path) == plan and path.read_text() == plan.to_yaml()


def test_plan_keeps_the_target_depth_and_the_proxy(tmp_path):
    proxy = ProxyInfo(
        name="built-in proxy",
        kind="builtin",
        num_layers=2,
        hidden_size=128,
        active_layers=1,
        min_depth=1,
        learning_rate=1e-3,
        batch_size=32,
    )
    plan = consistent_plan(
        **_fields(min_depth=2, train=TrainConfig(active_layers=2, min_depth=2), proxy=proxy, device="cuda")
    )
    again = Plan.load(plan.save(tmp_path / "p.yaml"))
    assert again == plan and again.min_depth == 2 and again.proxy.learning_rate == 1e-3 and again.learning_rate == 1e-4
    # a plan that sets only train.min_depth (written before the field) reads it from there
    assert Plan(**_fields(train=TrainConfig(active_layers=2, min_depth=1))).min_depth == 1


@pytest.mark.parametrize(
    "kw,rule",
    [
        (dict(train_embeddings=False), "train_embeddings == train.train_embeddings"),
        (dict(train=TrainConfig(active_layers=3)), "active_layers == train.active_layers"),
        (dict(predicted_peak_bytes=11), "sum to predicted_peak_bytes"),
        (dict(min_depth=1), "min_depth == train.min_depth"),
    ],
)
def test_plan_rejects_disagreeing_fields(tmp_path, kw, rule):
    with pytest.raises(ValueError, match=rule):
        Plan(**_fields(**kw))
    # and from a file: one PlannerError naming the rule
    data = consistent_plan(**_fields()).model_dump(mode="json")
    data.update({k: (v.model_dump(mode="json") if hasattr(v, "model_dump") else v) for k, v in kw.items()})
    import yaml

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(PlannerError, match="must match the plan schema"):
        Plan.load(tmp_path / "bad.yaml")


def test_plan_records_the_data_and_steps_and_older_plans_still_load(tmp_path):
    from planner.plan import TrainingData

    data = TrainingData(path="/d/train.jsonl", format="jsonl", fields={"prompt": "question", "answer": "answer"})
    plan = consistent_plan(**_fields(data=data, steps=150))
    again = Plan.load(plan.save(tmp_path / "p.yaml"))
    assert again.data == data and again.steps == 150
    older = plan.model_dump(mode="json")
    del older["data"], older["steps"]
    import yaml

    (tmp_path / "old.yaml").write_text(yaml.safe_dump(older))
    old = Plan.load(tmp_path / "old.yaml")
    assert old.data is None and old.steps is None
    with pytest.raises(ValueError, match="steps"):
        Plan(**_fields(steps=0))
