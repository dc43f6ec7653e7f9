"""One proxy run: its learning-rate schedule and the figures it reports next to the metric."""

import pytest
import torch

from planner.errors import PlannerError
from planner.tune.proxy import train as proxy_mod
from planner.tune.proxy.train import lr_scheduler, run_proxy
from planner.tune.search.space import TrialParams
from tune_helpers import tiny_workload

PLAN = TrialParams(active_layers=2, period=2, scorer="uniform", train_embeddings=True, train_head=True, lr=1e-2)


def test_linear_schedule_decays_to_zero_over_the_run():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    sched = lr_scheduler(opt, "linear", steps=4)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.3, 0.225, 0.15, 0.075]) and opt.param_groups[0]["lr"] == 0.0
    assert lr_scheduler(opt, "constant", steps=4) is None
    with pytest.raises(PlannerError, match="schedule must be one of"):
        lr_scheduler(opt, "cosine", steps=4)


def _lrs_of_a_run(monkeypatch, schedule: str, steps: int = 6) -> list[float]:
    """The learning rate of each optimizer step of a real proxy run (read from the optimizer it trains)."""
    seen = []
    real = proxy_mod._optimizer_class

    def recording(name):
        build = real(name)

        def built(params, lr):
            opt = build(params, lr)
            opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(o.param_groups[0]["lr"]))
            return opt

        return built

    monkeypatch.setattr(proxy_mod, "_optimizer_class", recording)
    run_proxy(tiny_workload(), PLAN, batch_size=4, steps=steps, eval_every=steps, seed=0, schedule=schedule)
    return seen


def test_a_proxy_run_follows_its_schedule(monkeypatch):
    assert _lrs_of_a_run(monkeypatch, "constant") == pytest.approx([1e-2] * 6)
    assert _lrs_of_a_run(monkeypatch, "linear") == pytest.approx([1e-2 * (1 - s / 6) for s in range(6)])


def test_schedules_give_different_results():
    wl = tiny_workload()
    a = run_proxy(wl, PLAN, batch_size=4, steps=6, eval_every=6, seed=0, schedule="constant").metric
    b = run_proxy(wl, PLAN, batch_size=4, steps=6, eval_every=6, seed=0, schedule="linear").metric
    assert a != b


def test_accuracy_is_reported_next_to_an_eval_loss_when_answers_exist():
    loss_wl, acc_wl = tiny_workload(metric="eval_loss"), tiny_workload(metric="accuracy")
    assert run_proxy(loss_wl, PLAN, batch_size=4, steps=2, eval_every=2).secondary == {}  # no answers to match
    assert run_proxy(acc_wl, PLAN, batch_size=4, steps=2, eval_every=2).secondary == {}  # accuracy is the metric
    both = tiny_workload(metric="accuracy")
    both.metric_name, both.direction = "eval_loss", "minimize"  # answers to match, scored by eval loss
    got = run_proxy(both, PLAN, batch_size=4, steps=2, eval_every=2, seed=0)
    again = run_proxy(acc_wl, PLAN, batch_size=4, steps=2, eval_every=2, seed=0)
    assert set(got.secondary) == {"accuracy"} and got.secondary["accuracy"] == again.metric  # same run, same weights


def test_a_run_over_batches_collated_once_is_bitwise_the_run_collating_every_step(monkeypatch):
    from planner.data.workload import Workload, collate

    def run():
        return run_proxy(tiny_workload(), PLAN, batch_size=4, steps=6, eval_every=3, seed=1)

    fast = run()
    monkeypatch.setattr(Workload, "_train_table", lambda self: None)
    monkeypatch.setattr(
        Workload,
        "_eval_batches",
        lambda self, examples: [collate(examples[i : i + 64], self.pad_id) for i in range(0, len(examples), 64)],
    )
    slow = run()
    assert fast.metric == slow.metric and fast.evaluations == slow.evaluations and fast.history == slow.history
