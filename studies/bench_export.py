"""Exports against their trainers' rules: what each target trains, draws and holds, per plan kind.

    python studies/bench_export.py | tee reports/bench_export.txt
    python studies/bench_export_run.py | tee -a reports/bench_export.txt   # the same exports in the real trainers

Every plan of the export contract test (tiny 4-layer llama, gpt2 and qwen2 models built from
configs) is exported to every target, applied with the trainer's own rule (peft and BAdam as
installed, axolotl/LMFlow/LLaMA-Factory/ms-swift rules reproduced from their code, see
tests/trainer_rules.py and tests/trainer_rules_swift.py) and trained 6 steps next to planner's own sampler. `says` is what the
export's loss lines name (lines about the data aside), `measured` what differs; optimizer state is the most held after any
step (torch tensors' bytes on CPU), copies are weight copies the trainer keeps (BAdam's float32
block, peft's modules_to_save). Then the LISA callbacks' optimizer state on a 6-layer llama
(γ=2, K=2) step by step, against planner's sampler, which drops a frozen layer's state.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def matrix() -> None:
    from test_export_contract import PLANS, loss_kinds, plan_of, truth
    from trainer_rules import RUNNERS, differences

    from planner.export import EXPORTERS, get_exporter

    print(f"{'plan':30s} {'target':12s} {'says':17s} {'measured':17s} {'state B (plan)':>22s} {'copies B':>9s}")
    agree = total = 0
    for name in sorted(PLANS):
        plan, ref = plan_of(name), truth(name)
        for target in sorted(EXPORTERS):
            result = get_exporter(target).render(plan)
            got = RUNNERS[target](plan, result.files, Path(tempfile.mkdtemp()))
            diffs = differences(plan, ref, got)
            # data lines: test_export_data.py
            said = sorted({k for line in result.lost for k in loss_kinds(line)} - {"data"})
            measured = sorted(diffs)
            agree += said == measured
            total += 1
            state = "error" if got.error else f"{got.state_bytes:,} ({ref.state_bytes:,})"
            print(
                f"{name:30s} {target:12s} {'+'.join(said) or 'exact':17s} {'+'.join(measured) or 'same':17s} {state:>22s} {got.copy_bytes:>9,}"
            )
    print(f"\nloss lines name exactly the measured kinds of difference: {agree} of {total}\n")


def lisa_state(steps: int = 10) -> None:
    import trainer_rules
    from plan_factory import make_plan
    from trainer_rules import run_axolotl, run_lmflow, run_swift

    from planner.config import TrainConfig
    from planner.export import get_exporter

    plan = make_plan(
        num_layers=6,
        active_layers=2,
        period=2,
        train=TrainConfig(active_layers=2),
        train_embeddings=False,
        train_head=False,
    )
    trainer_rules.STEPS = steps
    for target, runner in (("axolotl", run_axolotl), ("lmflow", run_lmflow), ("swift", run_swift), ("planner", None)):
        if runner is None:
            run = trainer_rules.run_plan(plan)
        else:
            run = runner(plan, get_exporter(target).render(plan).files, Path(tempfile.mkdtemp()))
        layers = [sorted({int(n.split(".")[2]) for n in s if n.startswith("model.layers.")}) for s in run.trained]
        print(f"{target:8s} draws at {run.draws}, layers per step {layers}, most optimizer state {run.state_bytes:,} B")
    for target in ("axolotl", "swift"):
        line = next(x for x in get_exporter(target).render(plan).lost if x.startswith("optimizer state"))
        print(f"{target}'s loss line: {line}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, CPU, 1 thread\n")
    matrix()
    lisa_state()
