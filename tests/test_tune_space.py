"""Search space, baselines, storage strings and option validation (no training)."""

import importlib.util
import sys

from dataclasses import replace

import optuna
import pytest

from planner.errors import PlannerError
from planner.sampling import SCORERS
from planner.tune.study.baselines import KINDS, LORA_BASELINE_RANK, baseline_points, enqueue_baselines
from planner.tune.search.space import LISA_ACTIVE_LAYERS, LISA_PERIOD, SearchSpace
from planner.tune.storage.backends import _driver_url, check_storage, open_storage
from planner.tune.options import TuneOptions

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(**kw):
    return SearchSpace(**{"num_layers": 4, "scorers": tuple(sorted(SCORERS)), "seq_len": 16, **kw})


def test_suggest_stays_in_space_and_uses_contract_keys():
    s = space(lora_ranks=(0, 8), batch_sizes=(1, 2))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        p = s.suggest(trial)
        assert s.contains(p)
        assert set(trial.params) == {
            "active_layers",
            "min_depth",
            "gradient_checkpointing",
            "period",
            "scorer",
            "train_embeddings",
            "train_head",
            "lr",
            "lora_rank",
            "batch_size",
        }
        assert trial.params == p.as_params()
        seen.add(p.scorer)
        study.tell(trial, 0.0)
    assert seen == set(SCORERS)  # every registered scorer is searchable


def test_optional_keys_absent_without_lora_or_batch_choice():
    s = space()
    trial = optuna.create_study().ask()
    p = s.suggest(trial)
    assert "lora_rank" not in trial.params and "batch_size" not in trial.params
    cfg = s.train_config(p)
    assert (
        cfg.active_layers == p.active_layers
        and cfg.lora_rank is None
        and cfg.batch_size == s.default_batch_size
        and cfg.seq_len == 16
    )


def test_lora_rank_zero_means_full_layer_weights():
    s = space(lora_ranks=(0, 8))
    assert (
        s.train_config(
            s.point(
                active_layers=1,
                period=5,
                scorer="uniform",
                train_embeddings=False,
                train_head=False,
                lr=1e-3,
                lora_rank=0,
            )
        ).lora_rank
        is None
    )
    assert (
        s.train_config(
            s.point(
                active_layers=1,
                period=5,
                scorer="uniform",
                train_embeddings=False,
                train_head=False,
                lr=1e-3,
                lora_rank=8,
            )
        ).lora_rank
        == 8
    )


def test_grid_is_the_full_product():
    s = space(scorers=("uniform", "ist"), periods=(5, 20), lr_choices=(1e-3, 1e-2))
    grid = s.grid()
    assert len(grid) == 4 * 2 * 2 * 2 * 2 * 2 and len(set(grid)) == len(grid)
    deep = space(scorers=("uniform",), periods=(5,), lr_choices=(1e-3,), min_depths=(0, 2), checkpointing=(False, True))
    # (γ, min_depth) pairs with γ <= 4 - min_depth: 4 at depth 0, 2 at depth 2; times E, H and checkpointing
    assert len(deep.grid()) == (4 + 2) * 2 * 2 * 2 and all(p.min_depth <= 4 - p.active_layers for p in deep.grid())
    with pytest.raises(PlannerError, match="lr_choices"):
        space().grid()


def test_bad_space_reports_every_problem():
    with pytest.raises(PlannerError) as err:
        SearchSpace(num_layers=0, scorers=(), seq_len=8, periods=(0,), lr_range=(1e-2, 1e-4))
    msg = str(err.value)
    assert "decoder layer" in msg and "--scorers" in msg and "periods" in msg and "low <= high" in msg


def test_baselines_match_lisa_defaults_and_enqueue_with_kinds():
    s = space()
    points = baseline_points(s)
    assert list(points) == list(KINDS)
    lisa, full, lora = points["baseline:lisa"], points["baseline:full"], points["baseline:lora"]
    assert (lisa.active_layers, lisa.period, lisa.scorer, lisa.train_embeddings, lisa.train_head) == (
        LISA_ACTIVE_LAYERS,
        LISA_PERIOD,
        "uniform",
        True,
        True,
    )
    assert full.active_layers == 4 and full.train_embeddings and full.train_head
    assert lora.lora_rank == LORA_BASELINE_RANK and not lora.train_embeddings and not lora.train_head
    study = optuna.create_study()
    enqueue_baselines(study, s)
    for kind in KINDS:
        trial = study.ask()
        assert trial.user_attrs["kind"] == kind
        assert trial.user_attrs["levers"] == dict(points[kind].levers)
        got = s.suggest_fixed(trial, points[kind])
        assert replace(got, levers=tuple(sorted(trial.user_attrs["levers"].items()))) == points[kind]
        study.tell(trial, 0.0)
    # the LoRA baseline adds lora_rank to a space without LoRA; searched trials stay compatible
    trial = study.ask()
    s.suggest(trial)
    study.tell(trial, 0.0)


def test_baselines_take_the_cheapest_form_that_fits_as_users_run_them():
    """Each baseline walks its recipes: as it is, with checkpointing, then its community's memory levers; a gate
    that admits only checkpointed configs gets checkpointed baselines, and QLoRA is 4-bit with checkpointing."""

    class OnlyCheckpointed:
        def predict(self, cfg):
            return type("P", (), {"fits": cfg.gradient_checkpointing})()

    class OnlyTorchtune:
        def predict(self, cfg):
            return type("P", (), {"fits": cfg.optimizer_in_backward or cfg.lora_rank is not None})()

    s = space(checkpointing=(False, True))
    plain = baseline_points(s)
    assert all(not p.gradient_checkpointing for k, p in plain.items() if k != "baseline:qlora")
    ckpt = baseline_points(s, OnlyCheckpointed())
    assert all(p.gradient_checkpointing for p in ckpt.values())
    assert ckpt["baseline:full"].levers == () and dict(ckpt["baseline:qlora"].levers) == {"quantize": "nf4-dq"}
    full = baseline_points(s, OnlyTorchtune())["baseline:full"]
    assert dict(full.levers) == {"optimizer": "paged_adamw8bit", "optimizer_in_backward": True, "loss_chunks": 8}
    cfg = s.train_config(full)
    assert cfg.optimizer == "paged_adamw8bit" and cfg.loss_chunks == 8 and cfg.gradient_checkpointing


def test_lisa_baseline_needs_uniform_scorer():
    assert "baseline:lisa" not in baseline_points(space(scorers=("ist",)))


def test_storage_strings():
    assert check_storage("sqlite:///studies/planner.db") == "sqlite:///studies/planner.db"
    assert check_storage("runs/study.log") == "runs/study.log"
    for bad in ("", "studies/planner.db", "redis2://x", "sqlite://", "sqlite:///:memory:"):
        with pytest.raises(PlannerError, match="--storage"):
            check_storage(bad)
    assert _driver_url("postgresql://u@h:5/db").startswith("postgresql")


def test_open_storage_creates_folders(tmp_path):
    st = open_storage(f"sqlite:///{tmp_path}/a/b/planner.db")
    optuna.create_study(storage=st, study_name="x")
    assert (tmp_path / "a" / "b" / "planner.db").is_file()
    journal = open_storage(str(tmp_path / "j" / "study.log"))
    optuna.create_study(storage=journal, study_name="x").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="x", storage=open_storage(str(tmp_path / "j" / "study.log"))).trials) == 2


@pytest.mark.skipif(
    importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is None,
    reason="needs a PostgreSQL driver (the test extra installs psycopg2-binary)",
)
def test_unreachable_storage_is_one_line(tmp_path):
    with pytest.raises(PlannerError, match="must be reachable"):
        open_storage("postgresql://nobody@127.0.0.1:1/none")


def test_missing_driver_is_one_line(monkeypatch):
    import planner.tune.storage.backends as storage_mod

    real = importlib.util.find_spec
    monkeypatch.setattr(
        storage_mod.importlib.util, "find_spec", lambda name, *a: None if name.startswith("psycopg") else real(name, *a)
    )
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # import fails as when it is not installed
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(PlannerError, match="needs its database driver installed") as err:
        open_storage("postgresql://nobody@127.0.0.1:1/none")
    assert "\n" not in str(err.value)


def test_journal_path_that_is_a_directory(tmp_path):
    (tmp_path / "j.log").mkdir()
    with pytest.raises(PlannerError, match="journal file must be a file, but .*j.log' is a directory"):
        check_storage(str(tmp_path / "j.log"))


def test_options_report_all_problems_at_once(tmp_path):
    opts = TuneOptions(
        vram="24 parsecs",
        n_trials=0,
        steps=0,
        scorers="uniform,nope",
        storage="mongodb://x",
        data=str(tmp_path / "missing.jsonl"),
    )
    with pytest.raises(PlannerError) as err:
        opts.validate_all()
    msg = str(err.value)
    for needle in ("--vram", "--n-trials", "--steps", "--scorers", "nope", "--storage", "--data"):
        assert needle in msg
    target, vram = TuneOptions(vram="24GB").validate_all()
    assert vram == 24 * 10**9 and target.name == "llama-3-8b"


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_the_gate_bound_keeps_active_layers_within_what_can_fit(name):
    from planner.tune.search.bounded import GateBoundedSampler
    from planner.tune.search.samplers import make_sampler

    s = space(num_layers=32, scorers=("uniform", "ist"))
    study = optuna.create_study(sampler=GateBoundedSampler(make_sampler(name, 0), 3))
    study.enqueue_trial(
        {
            **s.point(
                active_layers=32, period=20, scorer="uniform", train_embeddings=True, train_head=True, lr=1e-3
            ).as_params()
        }
    )  # a baseline beyond the bound is still recorded as it is
    study.optimize(lambda t: -s.suggest(t).active_layers - t.params["lr"], n_trials=25)
    active_layer_counts = [t.params["active_layers"] for t in study.trials]
    assert (
        active_layer_counts[0] == 32
        and all(1 <= g <= 3 for g in active_layer_counts[1:])
        and set(active_layer_counts[1:]) == {1, 2, 3}
    )
    assert all(t.distributions["active_layers"].high == 32 for t in study.trials)  # one distribution for every trial


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_the_study_sampler_is_built_without_a_deprecation_warning(name):
    import warnings

    from planner.tune.search.samplers import make_sampler

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # TPE's `active_layers` is deprecated since Optuna 4.9: the user must not see it
        make_sampler(name, 0)


class _Gate:
    """A gate whose verdict on a configuration is ``fits(config)``."""

    def __init__(self, fits):
        self.fits = fits

    def predict(self, config):
        return type("Prediction", (), {"fits": self.fits(config)})()


REFUSES_TRAINED_EMBEDDINGS = _Gate(lambda config: not config.train_embeddings)


def _screened_study(s, gate, screen: bool, n_trials: int, seed: int = 0):
    """planner tune's TPE on ``s``; gated points pruned untrained, as the objective does."""
    from planner.tune.search.bounded import GateBoundedSampler, admissible
    from planner.tune.search.samplers import TPE_STARTUP_TRIALS, make_sampler

    sampler = GateBoundedSampler(make_sampler("tpe", seed), s.num_layers, admissible(s, gate) if screen else None)
    study = optuna.create_study(sampler=sampler)

    def objective(trial):
        p = s.suggest(trial)
        fits = gate.predict(s.train_config(p)).fits
        trial.set_user_attr("gated", not fits)
        if not fits:
            raise optuna.TrialPruned("over budget")
        return p.active_layers + (0.0 if p.scorer == "uniform" else 0.5) + p.lr * 100

    study.optimize(objective, n_trials=n_trials)
    return study.trials, TPE_STARTUP_TRIALS  # TPE draws whole points from trial TPE_STARTUP_TRIALS on


@pytest.mark.parametrize("seed", [0, 1])
def test_tpe_draws_the_gate_refuses_are_drawn_again(seed):
    s = space(num_layers=8, scorers=("uniform", "ist"))
    gate = REFUSES_TRAINED_EMBEDDINGS
    unscreened, start = _screened_study(s, gate, screen=False, n_trials=30, seed=seed)
    screened, start = _screened_study(s, gate, screen=True, n_trials=30, seed=seed)
    assert sum(t.user_attrs["gated"] for t in unscreened[start:]) >= 3  # the search wastes trials on refused points ...
    assert not any(t.user_attrs["gated"] for t in screened[start:])  # ... unless its draws are screened


def test_tpe_draws_of_trained_points_are_drawn_again():
    s = space(
        num_layers=3,
        scorers=("uniform", "ist"),
        lr_choices=(1e-3, 3e-4),
        periods=(20,),
        min_depths=(0,),
        checkpointing=(False,),
        embedding_choices=(False,),
        head_choices=(True,),
    )  # 12 points
    allow = _Gate(lambda config: True)

    def repeats(got):  # TPE's draws of a point an earlier trial trained
        trials, start = got
        points = [s.from_params(t.params) for t in trials]
        return sum(points[i] in points[:i] for i in range(start, len(points)))

    assert repeats(_screened_study(s, allow, screen=False, n_trials=12)) >= 2
    assert repeats(_screened_study(s, allow, screen=True, n_trials=12)) == 0


def test_where_nothing_is_admissible_the_draw_stands():
    """Every TPE draw is refused: each trial takes REDRAWS draws from TPE and REDRAWS uniform ones, then trains
    (gated, as unscreened) TPE's last draw; the study goes on. The draws are recorded as the samplers return them."""
    from planner.tune.search.bounded import REDRAWS, GateBoundedSampler, admissible
    from planner.tune.search.samplers import TPE_STARTUP_TRIALS, make_sampler

    s, refuse_all = space(num_layers=8), _Gate(lambda config: False)
    tpe, drawn = make_sampler("tpe", 0), {}
    real_tpe = tpe.sample_relative

    def recorded(study, trial, search_space):
        params = real_tpe(study, trial, search_space)
        drawn.setdefault(trial.number, []).append(dict(params))
        return params

    tpe.sample_relative = recorded
    uniform = []
    real_uniform = optuna.samplers.RandomSampler.sample_independent

    def recorded_uniform(self, study, trial, name, dist):
        uniform.append(trial.number)
        return real_uniform(self, study, trial, name, dist)

    study = optuna.create_study(sampler=GateBoundedSampler(tpe, s.num_layers, admissible(s, refuse_all)))

    def objective(trial):
        s.suggest(trial)
        raise optuna.TrialPruned("over budget")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(optuna.samplers.RandomSampler, "sample_independent", recorded_uniform)
        study.optimize(objective, n_trials=8)
    screened = sorted(n for n, draws in drawn.items() if draws[-1])  # TPE drew whole points for these trials
    assert len(study.trials) == 8 and screened == list(range(TPE_STARTUP_TRIALS, 8))
    for n in screened:
        assert len(drawn[n]) == REDRAWS
        assert uniform.count(n) == REDRAWS * len(drawn[n][-1])  # the uniform redraws, every parameter of each
        assert {k: study.trials[n].params[k] for k in drawn[n][-1]} == drawn[n][-1]  # TPE's last draw trained


def test_a_draw_that_is_not_a_whole_point_is_let_through():
    from planner.tune.search.bounded import admissible

    accept = admissible(space(), REFUSES_TRAINED_EMBEDDINGS)(optuna.create_study())
    assert accept({"active_layers": 2})  # the objective gates it as before
    point = space().point(active_layers=2, period=20, scorer="uniform", train_embeddings=True, train_head=True, lr=1e-3)
    assert not accept(point.as_params())
    assert accept({**point.as_params(), "train_embeddings": False})


def test_a_draw_without_its_conditional_choice_is_screened_over_every_choice():
    """Whole-point draws cover the parameters every trial shares; ``quantize`` is asked only of static-scorer points,
    so a draw of one lacks it. Such a draw passes where some choice fits (the trial's own draw picks), not blindly:
    at 24 GB the default study trained 10 of 20 searched points gated, all static ones with trained embeddings."""
    from planner.tune.search.bounded import admissible

    s = space(scorers=("fixed", "uniform"), static_scorers=("fixed",), quantize_choices=(None, "nf4-dq"))
    params = {
        k: v
        for k, v in s.point(active_layers=2, period=20, scorer="fixed", train_embeddings=True, train_head=True, lr=1e-3)
        .as_params()
        .items()
        if k != "quantize"
    }
    assert not admissible(s, REFUSES_TRAINED_EMBEDDINGS)(optuna.create_study())(params)  # in neither form
    assert admissible(s, REFUSES_TRAINED_EMBEDDINGS)(optuna.create_study())({**params, "train_embeddings": False})
    only_quantized = _Gate(lambda config: config.quantize is not None)
    assert admissible(s, only_quantized)(optuna.create_study())(params)  # one of its choices fits


@pytest.mark.parametrize("seed", [0, 1])
def test_screened_tpe_draws_of_static_points_are_not_gated(seed):
    s = space(num_layers=8, scorers=("fixed", "uniform"), static_scorers=("fixed",), quantize_choices=(None, "nf4-dq"))
    screened, start = _screened_study(s, REFUSES_TRAINED_EMBEDDINGS, screen=True, n_trials=30, seed=seed)
    assert any(t.params["scorer"] == "fixed" and "quantize" in t.params for t in screened[start:])
    assert not any(t.user_attrs["gated"] for t in screened[start:])
