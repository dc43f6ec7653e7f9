"""A sampled plan in the form that fits: memory-only levers pulled where the plan needs them.

The search samples what changes the result (γ, ``min_depth``, K, the scorer, embeddings/head,
the learning rate, LoRA and its quantized base weights) and checkpointing, which trades time for
memory. The levers that change memory alone (``Lever.fit_value``: the optimizer step in backward,
then the loss in 8 chunks, torchtune's single-device order) are not sampled: a plan over budget as
it is walks :attr:`SearchSpace.forms <planner.tune.search.space.SearchSpace.forms>` (each form adds the
next lever to the last) and runs in the first form the gate admits; one over budget in every
form is gated at its last. A lever whose flag the user gave (``--optimizer-in-backward``,
``--no-optimizer-in-backward``, ``--loss-chunks``) is fixed for every trial and never pulled. The
form a trial ran in is recorded (its record's ``levers``, as a baseline's) and carried into the
plan; a trainer that cannot run a lever says so in its export's lost lines.

Example (Llama-3-8B, bfloat16, 1 x 1024, ``--vram 24GB`` = 22.35 GiB; embeddings and head frozen, from
layer 8 up, with checkpointing): γ = 3 fits as sampled (21.56 GiB); γ = 4 needs 23.61 GiB as sampled and
21.33 GiB with the step in backward (its gradients are freed as backward writes them); γ = 6 needs
25.86 GiB as sampled and 22.19 GiB with the loss in 8 chunks as well. The budget's frontier thus
moves from γ = 3 to γ = 6 (tests/test_tune_forms.py holds the walk on a tiny model).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from planner.levers import fit_levers
from planner.tune.search.gate import BudgetGate, Prediction
from planner.tune.search.space import SearchSpace, TrialParams


def form_steps(fixed: dict) -> tuple[dict, ...]:
    """The walk for a study whose user fixed the lever fields in ``fixed``: each step adds the next
    memory-only lever (its ``fit_value``) to the last."""
    steps: list[dict] = []
    cur: dict = {}
    for lever in fit_levers():
        (field,) = lever.fields
        if field in fixed:
            continue
        cur = {**cur, field: lever.fit_value}
        steps.append(cur)
    return tuple(steps)


def forms(space: SearchSpace, point: TrialParams) -> list[TrialParams]:
    """``point`` as sampled, then in each of the space's forms (levers it already carries win)."""
    own = dict(point.levers)
    return [point] + [replace(point, levers=tuple(sorted({**form, **own}.items()))) for form in space.forms]


def fitting(space: SearchSpace, gate: BudgetGate, point: TrialParams) -> tuple[TrialParams, Prediction]:
    """The first form of ``point`` that fits, with its prediction; none fits: the last form, gated."""
    for p in forms(space, point):
        prediction = gate.predict(space.train_config(p))
        if prediction.fits:
            return p, prediction
    return p, prediction


def fits(space: SearchSpace, gate: BudgetGate) -> Callable[[TrialParams], bool]:
    """Whether a point fits in some form (the frontier, the γ bound and the offered points ask this)."""
    return lambda p: fitting(space, gate, p)[1].fits
