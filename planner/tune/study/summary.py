"""What `planner tune` prints at the end: the best plan for the target against the baselines, in words and a table."""

from __future__ import annotations

from planner.levers import labels
from planner.units import human_bytes


def summary_table(result, *, metric_name: str, vram_bytes: int, target_name: str = "the target"):
    """Best plan vs baselines: metric (or "does not fit: X GiB"), the target's predicted peak, what tuning wins."""
    from rich.table import Table  # rich: deferred to output, ~0.1 s that 'planner tune --help' need not pay

    table = Table(title=f"planner tune: best plan for {target_name} vs baselines (budget {human_bytes(vram_bytes)})")
    for col in ("plan", metric_name, f"predicted peak ({target_name})", "tuned wins by", "trial"):
        table.add_column(col, justify="left" if col == "plan" else "right")
    for row in result.rows:
        if row.fits is False and row.predicted_peak_bytes is not None:
            metric = f"does not fit: {human_bytes(row.predicted_peak_bytes)}"
        else:
            metric = "-" if row.metric is None else f"{row.metric:.4f}"
            if row.seeds:  # the seed count is printed with the confirmation below the table
                metric += f" ± {row.std:.4f}"
        peak = "-" if row.predicted_peak_bytes is None else human_bytes(row.predicted_peak_bytes)
        if row.name == "tuned plan":
            delta = ""
        elif row.fits is False:
            delta = "never trained"
        elif row.delta is None:
            delta = (row.reason or row.state)[:40]
        else:
            delta = f"{row.delta:+.4f}"
        table.add_row(row.name, metric, peak, delta, str(row.trial_number))
    return table


def plan_line(plan) -> str:
    """The best plan in one line, in the target's numbering, with both learning rates."""
    lora = f", LoRA rank {plan.lora_rank}" if plan.lora_rank else ""
    # every lever the plan pulls (checkpointing, a fitting form, quantized base weights), in words
    ckpt = "".join(f", {word}" for word in labels(plan.train))
    lr = f"lr={plan.learning_rate:.3g}"
    if plan.proxy is not None and plan.proxy.learning_rate != plan.learning_rate:
        lr += f" (proxy {plan.proxy.learning_rate:.3g})"
    return (
        f"best plan for {plan.model} (trial {plan.trial_number}): γ={plan.active_layers} of {plan.num_layers} from layer "
        f"{plan.min_depth} up, K={plan.period}, scorer={plan.scorer}, embeddings {'on' if plan.train_embeddings else 'off'}, "
        f"head {'on' if plan.train_head else 'off'}{ckpt}, {lr}{lora}; batch {plan.train.batch_size} × seq "
        f"{plan.train.seq_len}, {plan.train.dtype}; predicted peak {human_bytes(plan.predicted_peak_bytes)} of "
        f"{human_bytes(plan.vram_bytes)}"
    )


def measured_lines(result) -> list[str]:
    """Measured vs predicted peaks of the trials that trained the target: on a GPU the device memory in use, on
    the CPU live tensor bytes of each checked draw against the CPU cost model; the largest error of each."""
    out = []
    gpu = [m for m in result.measured if m.get("device", "cuda") != "cpu"]
    cpu = [m for m in result.measured if m.get("device") == "cpu"]
    if gpu:
        worst = max(gpu, key=lambda m: abs(m["prediction_error"]))
        out.append(
            f"measured on the GPU in {len(gpu)} trial(s): largest prediction error "
            f"{100 * worst['prediction_error']:+.1f}% (trial {worst['trial']}: predicted "
            f"{human_bytes(worst['predicted_peak_bytes'])}, device memory in use at the peak "
            f"{human_bytes(worst['device_used_bytes'])}, max reserved {human_bytes(worst['max_reserved_bytes'])})"
        )
    if cpu:
        draws = [(m["trial"], d) for m in cpu for d in m.get("draws") or [] if d.get("predicted_bytes") is not None]
        exact = sum(d["predicted_bytes"] == d["measured_bytes"] for _, d in draws)
        trial, d = max(
            draws, key=lambda td: abs(td[1]["predicted_bytes"] - td[1]["measured_bytes"]), default=(None, None)
        )
        worst_words = (
            ""
            if d is None
            else (
                f"; furthest off: trial {trial}, layers {_layers(d['layers'])}, predicted {d['predicted_bytes']:,} B, "
                f"measured {d['measured_bytes']:,} B ({d['predicted_bytes'] - d['measured_bytes']:+,} B)"
            )
        )
        unrun = sorted({name for m in cpu for name in m.get("levers_not_run") or []})
        unrun_words = f"; {', '.join(unrun)} not run by the proxy loop: predicted without" if unrun else ""
        out.append(
            f"measured on the CPU in {len(cpu)} trial(s) (live tensor bytes of the training steps, per draw of "
            f"layers): {exact} of {len(draws)} draws exactly as predicted{worst_words}{unrun_words}"
        )
    return out


def _layers(layers: list[int]) -> str:
    if layers and layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def confirmation_lines(plan) -> list[str]:
    """Every confirmed candidate's mean ± std, then the margin over each baseline and whether it exceeds the seed noise."""
    conf = plan.confirmation
    if conf is None:
        return []
    out = [
        f"confirmed with {len(conf.seeds)} seeds ({conf.steps} proxy steps each; data order and layer draws vary, the "
        f"data split is fixed): {plan.metric_name} mean ± std"
    ]
    for c in conf.candidates:
        failed = f", {c.failed} failed" if c.failed else ""
        mean = "-" if c.mean is None else f"{c.mean:.4f} ± {c.std:.4f}"
        out.append(
            f"  {c.name:<10} {mean}  (trial {c.trial_number}, proxy lr {c.learning_rate:.3g}, predicted peak "
            f"{human_bytes(c.predicted_peak_bytes)}{failed}): " + " ".join(f"{m:.4f}" for m in c.metrics)
        )
    for m in conf.margins:
        if m.margin is None:
            out.append(f"vs {m.baseline} ({human_bytes(m.baseline_peak_bytes)}): {m.verdict}")
        else:
            out.append(
                f"vs {m.baseline} at its best learning rate ({human_bytes(m.baseline_peak_bytes)}): {m.versus} "
                f"({human_bytes(m.versus_peak_bytes)}) {'wins' if m.margin > 0 else 'loses'} by {m.margin:+.4f}, "
                f"2 standard errors {m.noise:.4f}: {m.verdict}"
            )
    if conf.verdict:
        out.append(conf.verdict)
    return out


def no_signal(plan) -> bool:
    """Whether confirmation found the tuned plan ahead of nothing beyond the seed noise (planner.tune.study.confirm)."""
    return plan.confirmation is not None and plan.confirmation.separated is False


def exit_code(plan) -> int:
    """`planner tune`'s exit code once the plan is written: 1 when its scores have no signal, as for a study whose
    trials all scored the same (planner.tune.study.result.NoSignal), else 0."""
    return 1 if no_signal(plan) else 0
