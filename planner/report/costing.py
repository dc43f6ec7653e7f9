"""The cost model's figures for a report: the estimator, a baseline's form, and the sweeps' curves.

A report prices configurations through an :data:`~planner.report.data.Estimator`, ``(spec, config) ->
(peak bytes, breakdown)``: :func:`cost_model_estimator` wraps ``planner.cost.estimate``, tests pass their own.
The sweeps draw the predicted peak against γ and against the lowest active layer.
"""

from __future__ import annotations

from planner.config import TrainConfig
from planner.errors import PlannerError
from planner.levers import labels
from planner.report.data import Curve, Estimator, Sweep, breakdown_dict, fits_budget

MAX_SWEEP_POINTS = 16  # cost-model evaluations per curve; a 80-layer model is sampled, not walked


def cost_model_estimator(device: str = "cpu") -> Estimator | None:
    """``planner.cost.estimate`` as ``(spec, config) -> (peak_bytes, breakdown)``, or None when absent."""
    try:
        from planner.cost import estimate  # planner.cost (torch): deferred to the first estimate; optional here
    except ImportError:
        return None
    estimate = getattr(estimate, "estimate", estimate)  # the package may expose the module or the function
    if not callable(estimate):
        return None

    def run(spec, cfg: TrainConfig) -> tuple[int, dict[str, int]]:
        try:
            result = estimate(spec, cfg, device=device)
        except PlannerError:
            raise
        except Exception as exc:  # noqa: BLE001 - one configuration the cost model cannot trace must not sink the report
            first = (str(exc).strip().splitlines() or [""])[0]
            raise PlannerError(f"the cost model failed ({type(exc).__name__}: {first})") from None
        get = result.get if isinstance(result, dict) else lambda k, d=None: getattr(result, k, d)
        parts = breakdown_dict(get("breakdown"))
        peak = get("peak_bytes")
        return int(peak if peak is not None else sum(parts.values())), parts

    return run


def config_with(base: TrainConfig, **changes) -> TrainConfig:
    """``base`` with ``changes``, validated again."""
    data = base.model_dump()
    data.update(changes)
    return TrainConfig(**data)


def fits_with(estimator: Estimator, spec, vram: int | None):
    """``fits(config)`` for :func:`planner.tune.study.baselines.baseline_configs`: the estimate within ``vram``; a
    configuration the cost model cannot price does not fit."""

    def fits(cfg: TrainConfig) -> bool:
        try:
            return bool(fits_budget(estimator(spec, cfg)[0], vram))
        except PlannerError:
            return False

    return fits


def form_label(label: str, cfg: TrainConfig) -> str:
    """A baseline's label with the levers of the form it is costed in, e.g. ``LoRA (checkpointing)``."""
    words = labels(cfg)
    return f"{label} ({', '.join(words)})" if words else label


def _spread(lo: int, hi: int, n: int = MAX_SWEEP_POINTS) -> list[int]:
    """Up to ``n`` integers from ``lo`` to ``hi`` inclusive, both ends kept."""
    if hi < lo:
        return []
    if hi - lo + 1 <= n:
        return list(range(lo, hi + 1))
    return sorted({round(lo + i * (hi - lo) / (n - 1)) for i in range(n)})


def _sweep_curves(
    spec, base: TrainConfig, estimator: Estimator, knob: str, active_layers: int
) -> tuple[list[Curve], str]:
    """Cost-model peaks against γ (``knob='active_layers'``) or the lowest active layer (``knob='depth'``),
    once with embeddings and head trained and once with them frozen; also the first failure, if any."""
    L = spec.num_layers
    curves, error = [], ""
    for emb, label in ((True, "embeddings + head trained"), (False, "embeddings + head frozen")):
        xs = _spread(1, L) if knob == "active_layers" else _spread(0, L - active_layers)
        x_ok, y_ok = [], []
        for x in xs:
            if knob == "active_layers":
                cfg_changes = dict(active_layers=x, min_depth=0)
            else:
                cfg_changes = dict(active_layers=active_layers, min_depth=x)
            try:
                cfg = config_with(base, layers=None, train_embeddings=emb, train_head=emb, **cfg_changes)
                cfg.check_against(L)
                peak, _ = estimator(spec, cfg)
            except PlannerError as exc:
                error = error or str(exc)
                continue
            x_ok.append(x)
            y_ok.append(int(peak))
        if x_ok:
            curves.append(Curve(label, x_ok, y_ok))
    return curves, error


def model_sweeps(
    active_layers_sweep: Sweep,
    depth_sweep: Sweep,
    spec,
    base,
    estimator,
    active_layers: int,
    active_layers_note: str,
    depth_note: str,
) -> tuple[str, str]:
    """Fill both sweeps with cost-model curves around ``base``; return the errors that cut them short."""
    active_layers_sweep.curves, g_err = _sweep_curves(spec, base, estimator, "active_layers", active_layers)
    depth_sweep.curves, d_err = _sweep_curves(spec, base, estimator, "depth", active_layers)
    depth_sweep.active_layers = active_layers
    active_layers_sweep.note = _curve_note(active_layers_note, active_layers_sweep, g_err)
    depth_sweep.note = _curve_note(depth_note, depth_sweep, d_err)
    return g_err, d_err


def _curve_note(note: str, sweep: Sweep, error: str) -> str:
    if not error:
        return note
    if not sweep.curves:
        return f"{note}; no cost-model curve: {error}"
    return f"{note}; some points left out: {error}"
