"""The documentation as written: the README's quick start and `.ci/run`, the estimate page's examples, the links."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ESTIMATE_PAGE = ROOT / "docs" / "estimate.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "reports" / "README.md"]


def _quickstart_commands() -> list[str]:
    start, end = README.index("<!-- section:quickstart -->"), README.index("<!-- /section:quickstart -->")
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", README[start:end], re.S)]


def test_quick_start_is_two_one_line_commands():
    first, second = _quickstart_commands()
    assert first == "pip install torch==2.13.0 -e . && planner tune --vram 24GB"
    # the tests' own dependencies come with the command that runs them, torch pinned in the same line
    assert second.startswith('pip install torch==2.13.0 -e ".[test]" && ') and second.endswith(
        "python -m pytest -q -n auto"
    )


def test_ci_runs_the_readme_test_command_verbatim():
    _, second = _quickstart_commands()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in ci if line and not line.startswith("#")]
    assert second in commands
    slow = "python -m pytest -q -n auto -m slow"  # the tests the README's command leaves out, after it
    assert commands.index(slow) > commands.index(second)
    assert not [line for line in commands if "pytest" in line and line not in (second, slow)]  # no other test run
    assert not [line for line in commands if line.startswith("pip install") and "-e" in line and line != second]


def test_the_test_extra_installs_what_the_tests_import():
    line = re.search(r"^test = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)  # tomllib needs 3.11
    names = {re.split(r"[<>=\[ ]", req.strip().strip('"'), maxsplit=1)[0].lower() for req in line.split(",")}
    assert {"pytest", "pytest-xdist", "psycopg2-binary"} <= names


def test_estimate_examples_are_the_commands_output():
    """Every ```console example of docs/estimate.md, run now (`studies/readme_examples.py --write` refreshes them)."""
    spec = importlib.util.spec_from_file_location("readme_examples", ROOT / "studies" / "readme_examples.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    assert mod.DEFAULT_FILE == ESTIMATE_PAGE  # what `--write` refreshes is what this test checks
    ran = []
    _, diffs = mod.process(ESTIMATE_PAGE.read_text(), ["estimate"], log=ran.append)
    assert len(ran) == 4  # every example ran (none skipped)
    assert not diffs, (
        "docs/estimate.md examples are stale; run `python studies/readme_examples.py --write`:\n" + "\n".join(diffs)
    )


def _slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text()).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _links(path: Path) -> list[str]:
    prose = re.sub(r"`[^`\n]*`", "", _prose(path.read_text()))  # inline code is not a link
    return re.findall(r"\]\(([^)\s]+)\)", prose)


def test_the_pages_exist_and_link_somewhere():
    assert {p.name for p in PAGES[1:-1]} >= {"estimate.md", "profile.md", "tune.md", "export.md", "report.md"}
    assert all(_links(page) for page in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_and_anchors_that_exist(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto: ...
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link}: no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link}: no heading with anchor #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)
