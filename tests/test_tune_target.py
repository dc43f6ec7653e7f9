"""The target and the proxy: the default question, depth and learning-rate mapping, the gate on a real target, bad input."""

import optuna
import pytest
from tune_helpers import tiny_workload, write_target_config

from planner.cli.main import main
from planner.config import TrainConfig
from planner.cost import estimate
from planner.spec import load_spec
from planner.tune import TuneOptions, run_tune
from planner.tune.study.baselines import RECIPES
from planner.tune.proxy.mapping import proxy_params, target_lr
from planner.tune.proxy.train import run_proxy
from planner.tune.search.space import SearchSpace, TrialParams
from planner.tune.storage.backends import open_storage

GB = 10**9


def point(**kw):
    return TrialParams(
        **{
            "active_layers": 1,
            "period": 20,
            "scorer": "uniform",
            "train_embeddings": False,
            "train_head": False,
            "lr": 1e-3,
            **kw,
        }
    )


@pytest.mark.parametrize(
    "active_layers, depth, want",
    [
        (5, 24, (1, 3)),  # 5·4/32 = 0.625 -> 1; 24·4/32 = 3 -> 3 (room: 4 - 1 = 3)
        (12, 8, (2, 1)),  # 1.5 rounds half up to 2; 8·4/32 = 1
        (1, 0, (1, 0)),  # 0.125 -> 0, clamped up to 1
        (32, 0, (4, 0)),  # every layer -> every layer
        (20, 12, (3, 1)),  # 2.5 -> 3; 1.5 -> 2, lowered to 4 - 3 = 1
    ],
)
def test_depth_rule_32_to_4(active_layers, depth, want):
    got = proxy_params(
        point(active_layers=active_layers, min_depth=depth, gradient_checkpointing=True, lora_rank=8),
        target_layers=32,
        proxy_layers=4,
    )
    assert (got.active_layers, got.min_depth) == want
    # K, scorer, embeddings/head, LoRA rank and the learning rate are unchanged; checkpointing (memory, not
    # the result) is off on a proxy that is not the target
    assert (got.period, got.scorer, got.lora_rank, got.gradient_checkpointing, got.lr) == (
        20,
        "uniform",
        8,
        False,
        1e-3,
    )


def test_same_depth_is_identity_and_a_deeper_proxy_is_refused():
    p = point(active_layers=3, min_depth=2, gradient_checkpointing=True)
    assert proxy_params(p, target_layers=6, proxy_layers=6, is_target=True) is p
    assert proxy_params(p, target_layers=6, proxy_layers=6) == point(active_layers=3, min_depth=2)
    with pytest.raises(Exception, match="proxy layers <= target layers"):
        proxy_params(p, target_layers=4, proxy_layers=6)


def test_learning_rate_rule_is_inverse_width():
    assert target_lr(1e-3, proxy_hidden=128, target_hidden=4096) == pytest.approx(3.125e-5, rel=1e-12)
    assert target_lr(2e-4, proxy_hidden=2048, target_hidden=2048) == 2e-4


def test_frontier_is_the_largest_fitting_active_layers_per_depth():
    s = SearchSpace(num_layers=8, scorers=("uniform",), seq_len=16, min_depths=(0, 4), checkpointing=(False, True))

    def fits(p):  # a made-up budget: 3 layers from the bottom, 4 from layer 4, one more with checkpointing
        return p.active_layers <= (3 if p.min_depth == 0 else 4) + p.gradient_checkpointing

    got = {(p.min_depth, p.gradient_checkpointing): p.active_layers for p in s.frontier(fits)}
    assert got == {(0, False): 3, (0, True): 4, (4, False): 4, (4, True): 4}  # room above layer 4 is 4


def test_offered_points_are_the_most_layers_with_ends_frozen_and_trainable():
    from types import SimpleNamespace

    from planner.tune.study.baselines import offered_points

    s = SearchSpace(
        num_layers=8, scorers=("uniform", "ist"), seq_len=16, min_depths=(0, 4), checkpointing=(False, True)
    )

    class Gate:  # a made-up budget: 3 layers from the bottom, 4 higher up, one more with checkpointing, two fewer
        def predict(self, c):  # when embeddings and head train
            room = (3 if c.min_depth == 0 else 4) + c.gradient_checkpointing - 2 * c.train_embeddings
            return SimpleNamespace(fits=c.active_layers <= room)

    got = [
        (p.train_embeddings, p.train_head, p.gradient_checkpointing, p.active_layers, p.min_depth)
        for p in offered_points(s, Gate())
    ]
    assert got == [
        (False, False, False, 4, 4),
        (False, False, True, 4, 0),
        (True, True, False, 2, 4),
        (True, True, True, 3, 4),
    ]
    assert (
        SearchSpace(num_layers=8, scorers=("uniform",), seq_len=16, head_choices=(False,)).frontier(
            lambda p: True, ends=True
        )
        == []
    )
    # embeddings that always train: the head-frozen and the head-trained frontier stay apart
    emb_on = SearchSpace(num_layers=8, scorers=("uniform",), seq_len=16, embedding_choices=(True,))
    got = [(p.train_embeddings, p.train_head, p.active_layers) for p in offered_points(emb_on, Gate())]
    assert got == [(True, False, 1), (True, True, 1)]
    # a head that always trains: the "frozen" frontier freezes what it can (the embeddings)
    head_on = SearchSpace(num_layers=8, scorers=("uniform",), seq_len=16, head_choices=(True,))
    assert [
        (p.train_embeddings, p.train_head, p.active_layers) for p in head_on.frontier(lambda p: p.active_layers <= 5)
    ] == [(False, True, 5)]


def test_the_default_question_is_llama_3_8b_in_bfloat16():
    target, vram = TuneOptions(vram="24GB").validate_all()
    assert (target.name, target.num_layers, target.hidden_size) == ("llama-3-8b", 32, 4096)
    assert (target.shape.dtype, target.shape.seq_len, target.shape.batch_size, target.shape.optimizer) == (
        "bfloat16",
        1024,
        1,
        "adamw",
    )
    assert vram == 24 * GB and target.device == "cuda"


class Recorder:
    def __init__(self):
        self.trained = []

    def __call__(self, workload, params, **kw):
        self.trained.append(params)
        return run_proxy(workload, params, **kw)


def test_the_gate_decides_for_llama_3_8b_at_24gb(tmp_path):
    """A real study on the 8B target (a tiny proxy trains): over-budget points and baselines are never trained."""
    wl = tiny_workload()
    rec = Recorder()
    opts = TuneOptions(
        vram="24GB",
        model="llama-3-8b",
        n_trials=12,
        steps=4,
        eval_every=2,
        storage=f"sqlite:///{tmp_path}/s.db",
        study="t",
        out=str(tmp_path / "plan.yaml"),
        proxy_device="cpu",
    )
    result = run_tune(opts, workload=wl, progress=False, proxy=rec)
    trials = optuna.load_study(study_name="t", storage=open_storage(f"sqlite:///{tmp_path}/s.db")).trials
    spec = load_spec("llama-3-8b")
    by_kind = {t.user_attrs["kind"]: t for t in trials}
    # each baseline ran in the first form of its recipes whose estimate fits 24 GB (checked here form by form with
    # the cost model directly); one that fits in no form is gated in its last form and never trained
    shape = dict(batch_size=1, seq_len=1024, dtype="bfloat16")
    methods = {
        "baseline:full": dict(active_layers=32),
        "baseline:lisa": dict(active_layers=2),
        "baseline:lora": dict(active_layers=32, lora_rank=16, train_embeddings=False, train_head=False),
        "baseline:qlora": dict(active_layers=32, lora_rank=16, train_embeddings=False, train_head=False),
    }
    for kind, method in methods.items():
        t = by_kind[kind]
        peaks = [
            estimate(spec, TrainConfig(**shape, **method, **form), device="cuda").peak_bytes for form in RECIPES[kind]
        ]
        first = next((i for i, peak in enumerate(peaks) if peak <= 24 * GB), None)
        form = dict(RECIPES[kind][len(peaks) - 1 if first is None else first])
        assert t.params["gradient_checkpointing"] == form.pop("gradient_checkpointing", False)
        assert t.user_attrs["levers"] == form
        assert t.user_attrs["gated"] == (first is None) and ("metric" in t.user_attrs) == (first is not None)
    # at this budget LoRA needs checkpointing, and full fine-tuning fits only in torchtune's form
    assert (
        by_kind["baseline:lora"].params["gradient_checkpointing"]
        and by_kind["baseline:lora"].user_attrs["levers"] == {}
    )
    assert by_kind["baseline:full"].user_attrs["levers"].get("optimizer_in_backward") is True
    gated = [t for t in trials if t.user_attrs.get("gated")]
    assert len(rec.trained) == len(trials) - len(gated)
    # each trial's recorded peak is the cost model's answer for the target in its shape (batch 1 x 1024, bf16)
    for t in trials[:6]:
        p = t.params
        cfg = TrainConfig(
            batch_size=1,
            seq_len=1024,
            dtype="bfloat16",
            active_layers=p["active_layers"],
            min_depth=t.user_attrs["min_depth"],
            gradient_checkpointing=p["gradient_checkpointing"],
            train_embeddings=p["train_embeddings"],
            train_head=p["train_head"],
            lora_rank=p.get("lora_rank") or None,
            **(t.user_attrs.get("levers") or {}),
        )
        assert t.user_attrs["predicted_peak_bytes"] == estimate(spec, cfg, device="cuda").peak_bytes
    # the tiny proxy trains mapped plans: γ of 32 layers -> γ of 3
    for t in trials:
        if not t.user_attrs.get("gated"):
            assert 1 <= t.user_attrs["proxy_plan"]["active_layers"] <= 3
    plan = result.plan
    assert plan.model == "llama-3-8b" and plan.num_layers == 32 and plan.train.dtype == "bfloat16"
    assert plan.predicted_peak_bytes <= 24 * GB and plan.train.seq_len == 1024
    assert plan.learning_rate == pytest.approx(plan.proxy.learning_rate * 32 / 4096)
    assert any(t.user_attrs.get("offered") for t in trials)
    # the gate bounds the search: no plan of more than G layers fits anywhere (frozen embeddings and head, any
    # min_depth, checkpointing or not, as sampled or with the step in backward and then the chunked loss as well),
    # so none is proposed; G from the cost model, point by point
    walk = ({}, {"optimizer_in_backward": True}, {"optimizer_in_backward": True, "loss_chunks": 8})

    def fits(active_layers, forms=walk):
        return any(
            estimate(
                spec,
                TrainConfig(
                    batch_size=1,
                    seq_len=1024,
                    dtype="bfloat16",
                    active_layers=active_layers,
                    min_depth=d,
                    gradient_checkpointing=c,
                    train_embeddings=False,
                    train_head=False,
                    **form,
                ),
                device="cuda",
            ).peak_bytes
            <= 24 * GB
            for d in (0, 8, 16, 24)
            if d <= 32 - active_layers
            for c in (False, True)
            for form in forms
        )

    g = max(active_layers for active_layers in range(1, 9) if fits(active_layers))
    assert not fits(g + 1) and g < 32
    assert not fits(g, forms=walk[:1])  # the forms raise the bound (3 as sampled, 6 with both levers)
    assert all(t.params["active_layers"] <= g for t in trials if t.user_attrs["kind"] == "search")


def one_line(capsys, argv):
    capsys.readouterr()  # what writing the fixtures printed
    code = main(["tune", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_contradicting_target_flags_are_one_line(capsys):
    err = one_line(capsys, ["--vram", "24GB", "--amp", "bf16", "--dtype", "bfloat16"])
    assert "amp" in err and "float32 weights" in err and "'bfloat16'" in err
    err = one_line(capsys, ["--vram", "24GB", "--seq-len", "0", "--batch-size", "x"])
    assert "--seq-len" in err and "--batch-size" in err


def test_a_budget_no_plan_fits_names_the_smallest(capsys):
    err = one_line(capsys, ["--vram", "12GB", "--quiet"])
    assert "llama-3-8b" in err and "would fit" in err and "γ=1" in err and "gradient checkpointing" in err


def test_a_proxy_deeper_than_the_target_is_refused(tmp_path, capsys):
    target = write_target_config(tiny_workload(num_layers=2), tmp_path / "t" / "config.json")
    from tune_helpers import write_user_workload

    model_dir, data = write_user_workload(tmp_path)  # 3 layers
    err = one_line(
        capsys,
        [
            "--vram",
            "1GB",
            "--model",
            target,
            "--proxy",
            model_dir,
            "--data",
            data,
            "--device",
            "cpu",
            "--proxy-device",
            "cpu",
            "--storage",
            f"sqlite:///{tmp_path}/s.db",
            "--quiet",
        ],
    )
    assert "must not be deeper than the target" in err and "3 decoder layers" in err


def test_a_proxy_without_decoder_layers_is_refused(tmp_path, capsys):
    from tune_helpers import write_user_workload

    from planner.data.tokenizer import CharTokenizer
    from planner.spec import build_model
    from planner.spec.tiny import tiny_spec

    model_dir, data = write_user_workload(tmp_path)
    tok = CharTokenizer()
    spec = tiny_spec("llama", num_layers=0, hidden=32, heads=2, kv_heads=1, vocab=tok.vocab_size)
    empty = tmp_path / "no-layers"
    build_model(spec, seed=0).save_pretrained(empty)
    tok.to_hf().save_pretrained(empty)
    err = one_line(
        capsys,
        [
            "--vram",
            "1GB",
            "--model",
            model_dir,
            "--proxy",
            str(empty),
            "--data",
            data,
            "--device",
            "cpu",
            "--proxy-device",
            "cpu",
            "--storage",
            f"sqlite:///{tmp_path}/s.db",
            "--quiet",
        ],
    )
    assert "--proxy must be a causal LM with decoder layers" in err


def test_proxy_target_offline_names_the_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    err = one_line(
        capsys,
        [
            "--vram",
            "24GB",
            "--proxy",
            "target",
            "--proxy-device",
            "cpu",
            "--storage",
            f"sqlite:///{tmp_path}/s.db",
            "--quiet",
        ],
    )
    assert "meta-llama/Meta-Llama-3-8B" in err and str(tmp_path / "hub") in err and "offline" in err


def test_target_points_that_map_to_one_proxy_plan_share_its_run():
    from planner.spec.tiny import tiny_spec
    from planner.tune.search.gate import BudgetGate
    from planner.tune.study.objective import Objective

    wl = tiny_workload()  # 3 layers
    space = SearchSpace(
        num_layers=32,
        scorers=("uniform",),
        seq_len=wl.seq_len,
        periods=(20,),
        lr_choices=(1e-3,),
        embedding_choices=(False,),
        head_choices=(False,),
        batch_sizes=(8,),
    )
    gate = BudgetGate(tiny_spec("llama", num_layers=32, hidden=32, heads=2, kv_heads=1, vocab=48), 10**12, device="cpu")
    rec = Recorder()
    objective = Objective(
        wl, space, gate, steps=2, eval_every=2, proxy=rec, proxy_layers=3, proxy_hidden=32, target_hidden=32
    )
    study = optuna.create_study(direction="minimize")
    for active_layers in (1, 2, 16):  # 3/32 of each, rounded half up: 1, 1, 2
        study.enqueue_trial(
            {
                "active_layers": active_layers,
                "min_depth": 0,
                "gradient_checkpointing": False,
                "period": 20,
                "scorer": "uniform",
                "train_embeddings": False,
                "train_head": False,
                "lr": 1e-3,
            }
        )
    study.optimize(objective, n_trials=3)
    t = study.trials
    assert [p.active_layers for p in rec.trained] == [1, 2]  # two proxy runs for three trials
    assert t[1].user_attrs["reused_from"] == 0 and t[1].value == t[0].value
    assert "reused_from" not in t[2].user_attrs and t[2].user_attrs["proxy_plan"]["active_layers"] == 2


def test_out_of_memory_is_a_failed_trial_with_predicted_and_available_bytes():
    from planner.tune.search.gate import BudgetGate
    from planner.tune.study.objective import Objective
    from planner.tune.proxy.train import ProxyOutOfMemory

    wl = tiny_workload()

    def out_of_memory(workload, params, **kw):
        if params.active_layers == 2:  # the device says no, whatever the prediction said
            raise ProxyOutOfMemory(
                "out of memory on cuda (CUDA out of memory. Tried to allocate 2.00 GiB)", 123_456_789
            )
        return run_proxy(workload, params, **kw)

    space = SearchSpace(
        num_layers=3,
        scorers=("uniform",),
        seq_len=wl.seq_len,
        periods=(20,),
        lr_choices=(1e-3,),
        embedding_choices=(False,),
        head_choices=(False,),
        batch_sizes=(8,),
    )
    gate = BudgetGate(wl.spec, 10**12, device="cpu")
    study = optuna.create_study(direction="minimize")
    for active_layers in (2, 1):
        study.enqueue_trial(
            {
                "active_layers": active_layers,
                "min_depth": 0,
                "gradient_checkpointing": False,
                "period": 20,
                "scorer": "uniform",
                "train_embeddings": False,
                "train_head": False,
                "lr": 1e-3,
            }
        )
    study.optimize(
        Objective(wl, space, gate, steps=2, eval_every=2, proxy=out_of_memory), n_trials=2, catch=(Exception,)
    )
    failed, ok = study.trials
    predicted = failed.user_attrs["predicted_peak_bytes"]
    assert failed.state == optuna.trial.TrialState.FAIL and failed.user_attrs["available_bytes"] == 123_456_789
    assert (
        f"predicted {predicted} B" in failed.user_attrs["reason"]
        and "available 123456789 B" in failed.user_attrs["reason"]
    )
    assert ok.state == optuna.trial.TrialState.COMPLETE  # the study went on


def test_the_builtin_proxy_is_as_deep_as_the_target_up_to_its_cap(tmp_path, monkeypatch):
    """`--proxy builtin` pretrains the default model at the target's depth (capped): γ and min_depth map one to one."""
    from types import SimpleNamespace

    import planner.data.pretrain as pretrain
    from planner.data.pretrain import PretrainRecipe
    from planner.tune.proxy.source import resolve_proxy

    monkeypatch.setenv("PLANNER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(
        pretrain,
        "DEFAULT_RECIPE",
        PretrainRecipe(
            layers=4, hidden=32, heads=2, kv_heads=1, intermediate=64, seq_len=32, batch_size=4, steps=2, warmup=1
        ),
    )
    monkeypatch.setattr(pretrain, "MAX_LAYERS", 3)
    depths = {}
    for target_layers in (2, 3, 6):
        setup = resolve_proxy(
            "builtin",
            target=SimpleNamespace(num_layers=target_layers, source="t", name="t"),
            data=None,
            proxy_device="cpu",
            seed=0,
        )
        depths[target_layers] = (
            setup.num_layers,
            setup.workload.new_model(0).config.num_hidden_layers,
            setup.hidden_size,
        )
    assert depths == {2: (2, 2, 32), 3: (3, 3, 32), 6: (3, 3, 32)}
    assert len(list((tmp_path / "cache").glob("default-llama-*[0-9a-f]"))) == 2  # one pretraining per depth


def test_the_default_models_depth_must_be_a_positive_integer():
    from planner.data import load_workload
    from planner.errors import PlannerError

    with pytest.raises(PlannerError, match=r"layers must be an integer >= 1, but got 0"):
        load_workload(layers=0)
