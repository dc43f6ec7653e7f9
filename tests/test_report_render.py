"""Report figures, HTML/Markdown writers and the `planner report` command on synthetic studies and plans."""

from __future__ import annotations

import base64
import json
import re

import pytest

from planner.cli.main import main
from planner.report import data as rdata
from planner.report import plan as rplan
from planner.report import study as rstudy
from planner.report.plots import render_figures
from planner.report.render import SECTION_TITLES, write_html, write_markdown
from test_report_data import _plan, fake_estimator, make_study

PNG = b"\x89PNG\r\n\x1a\n"
STUDY_FIGURES = {"breakdown", "tradeoff", "sweeps", "importance", "history"}


def _png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    d = rstudy.study_report_data(make_study(tmp), estimator=fake_estimator)
    out = tmp / "out"
    figs = render_figures(d, out, dpi=60)
    return d, figs, write_html(d, figs, out / "report.html"), write_markdown(d, figs, out / "report.md")


def test_every_study_figure_is_drawn(rendered):
    _, figs, _, _ = rendered
    assert set(figs) == STUDY_FIGURES
    for path in figs.values():
        raw = path.read_bytes()
        assert raw.startswith(PNG)
        w, h = _png_size(raw)
        assert 200 < w < 1000 and 150 < h < 600  # dpi 60: modest files


def test_html_is_self_contained(rendered):
    d, figs, html_path, _ = rendered
    text = html_path.read_text()
    for section in SECTION_TITLES:
        assert f'<section id="{section}">' in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == len(figs) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1]).startswith(PNG)
    assert "<link" not in text and "<script" not in text


def test_savings_table_in_both_writers(rendered):
    d, _, html_path, md_path = rendered
    md = md_path.read_text()
    # tuned plan #4: 6.00 GiB, saves 5.00 GiB (45.5 %) against full fine-tuning's 11.00 GiB; +0.2 vs LoRA, +0.15 vs LISA
    row = "| tuned plan (#4) | 6.00 | yes | 5.00 | 45.5 | 0.7000 | +0.2000 | +0.1500 |"
    assert row in md
    assert "| full fine-tuning | 11.00 | no | 0.00 | 0.0 | - | - | - |" in md
    html = html_path.read_text()
    assert "<td>tuned plan (#4)</td><td>6.00</td><td>yes</td><td>5.00</td><td>45.5</td>" in html


def test_markdown_links_the_pngs_beside_it(rendered):
    _, figs, _, md_path = rendered
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_path.read_text())
    assert sorted(links) == sorted(p.name for p in figs.values())
    assert all((md_path.parent / link).is_file() for link in links)


def test_plan_report_says_no_study(tmp_path):
    from planner.spec.tiny import tiny_spec

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(tiny_spec("llama", num_layers=4).config.to_dict()))
    d = rplan.plan_report_data(_plan(str(cfg)), name="p", estimator=fake_estimator)
    figs = render_figures(d, tmp_path / "out", dpi=50)
    assert set(figs) == {"breakdown", "sweeps"}
    md = write_markdown(d, figs, tmp_path / "out" / "report.md").read_text()
    assert md.count(rdata.NO_STUDY) >= 3  # trade-off, importance, history (+ summary)
    html = write_html(d, figs, tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2


def test_synthetic_study_is_labelled(tmp_path):
    study = make_study(tmp_path)
    study.set_user_attr("synthetic", True)
    d = rstudy.study_report_data(study, estimator=fake_estimator)
    assert "SYNTHETIC" in d.title


# ---------------------------------------------------------------- CLI


def test_cli_study_report(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(tmp_path, storage=url, name="demo")
    out = tmp_path / "rep"
    assert main(["report", "--study", "demo", "--storage", url, "--out", str(out), "--dpi", "50"]) == 0
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert {p.stem for p in out.glob("*.png")} == STUDY_FIGURES
    assert "wrote" in capsys.readouterr().out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory whose default storage holds study "demo"."""
    tmp = tmp_path_factory.mktemp("work")
    (tmp / "studies").mkdir()
    make_study(tmp, storage="sqlite:///" + str(tmp / "studies" / "planner.db"), name="demo")
    return tmp


def test_cli_default_out_dir(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    assert main(["report", "--study", "demo", "--dpi", "40"]) == 0
    assert (workdir / "reports" / "demo" / "report.html").is_file()


def test_cli_plan_report(tmp_path):
    from planner.spec.tiny import tiny_spec

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(tiny_spec("llama", num_layers=4).config.to_dict()))
    plan = _plan(str(cfg))
    path = plan.save(tmp_path / "my-plan.yaml")
    code = main(["report", str(path), "--out", str(tmp_path / "r"), "--dpi", "40"])
    assert code == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "# planner report: plan my-plan" in md and "breakdown.png" in md and "sweeps.png" in md
    assert "| full fine-tuning |" in md and "| tuned plan |" in md  # cost-model rows for the plan's model


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["report", "--study", "nope"], r"studies there: demo"),
        (["report", "--study", "demo", "--storage", "sqlite:///{tmp}/missing.db"], r"does not exist"),
        (["report", "--study", "demo", "--storage", "bogus"], r"--storage must be"),
        (["report", "{tmp}/missing.yaml"], r"plan file must exist"),
        (["report"], r"exactly one of --study"),
        (["report", "--study", "demo", "{tmp}/x.yaml"], r"exactly one of --study"),
    ],
)
def test_cli_errors_are_one_line_exit_2(workdir, tmp_path, monkeypatch, capsys, argv, pattern):
    monkeypatch.chdir(workdir)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err) and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "missing.db").exists()


def test_figures_name_their_axes_in_gib(rendered):
    from planner.report import plots

    d = rendered[0]
    for name, (draw, _) in plots.FIGURES.items():
        fig = draw(d)
        labels = " ".join(ax.get_ylabel() + " " + ax.get_xlabel() for ax in fig.axes)
        if name in ("breakdown", "sweeps", "tradeoff"):
            assert "(GiB)" in labels, name
    tradeoff = plots.tradeoff_figure(d)
    legend = [t.get_text() for t in tradeoff.axes[0].get_legend().get_texts()]
    assert "Pareto front" in legend and "tuned plan (#4)" in legend and "full fine-tuning, gated" in legend
    assert "VRAM budget 8.00 GiB" in legend


def test_confirmation_runs_are_not_drawn_as_search_trials(rendered):
    from dataclasses import replace

    from planner.report import plots
    from planner.report.data import HistoryPoint

    d = rendered[0]
    last = d.history[-1]
    d = replace(d, history=d.history + [HistoryPoint(last.number + 1, f"confirm:{last.number}:0", last.metric, None)])
    fig = plots.history_figure(d)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "confirmation run (a plan again, another seed)" in legend
    search = next(c for c in fig.axes[0].collections if c.get_label() == "search trial")
    assert last.number + 1 not in search.get_offsets()[:, 0]


def test_overhead_panel_and_off_scale_budget(tmp_path):
    from dataclasses import replace

    from planner.report import plots
    from planner.units import GiB, MiB

    d = rstudy.study_report_data(make_study(tmp_path), estimator=fake_estimator)
    small = [
        replace(b, breakdown={**{k: 10 * MiB for k in b.breakdown}, "overhead": 512 * MiB}, peak_bytes=562 * MiB)
        for b in d.bars
    ]
    d = replace(d, bars=small, vram_bytes=24 * GiB)
    fig = plots.breakdown_figure(d)
    assert len(fig.axes) == 2 and "without overhead" in fig.axes[1].get_ylabel()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("off the scale" in t for t in legend) and "activations" in legend
    assert fig.axes[0].get_ylim()[1] < 1.0  # the 24 GiB budget does not flatten the bars


def test_table_keeps_sub_gib_differences_visible(tmp_path):
    from dataclasses import replace

    from planner.report.render import savings_rows
    from planner.units import MiB

    d = rstudy.study_report_data(make_study(tmp_path), estimator=fake_estimator)
    bars = [replace(b, peak_bytes=p * MiB) for b, p in zip(d.bars, (600, 590, 591, 594))]
    _, rows = savings_rows(replace(d, savings=rdata.savings_table(bars)))
    # 600 MiB = 0.5859 GiB; 10 MiB saved = 0.0098 GiB (1.7 %)
    assert rows[0][1] == "0.5859" and rows[1][3] == "0.0098" and rows[1][4] == "1.7"


def test_cli_names_a_tune_plan_after_its_study(tmp_path, monkeypatch):
    from planner.spec.tiny import tiny_spec

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(tiny_spec("llama", num_layers=4).config.to_dict()))
    _plan(str(cfg)).save(tmp_path / "studies" / "mystudy" / "plan.yaml")
    assert main(["report", "studies/mystudy/plan.yaml", "--dpi", "40"]) == 0
    assert "plan: γ = 2, K = 20, scorer gradnorm" in (tmp_path / "reports" / "mystudy-plan" / "report.md").read_text()
