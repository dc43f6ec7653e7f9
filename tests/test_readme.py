"""The README's commands as written: the quick start's two lines, `.ci/run`, and the examples' output."""

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _quickstart_commands() -> list[str]:
    start, end = README.index("<!-- section:quickstart -->"), README.index("<!-- /section:quickstart -->")
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", README[start:end], re.S)]


def test_quick_start_is_two_one_line_commands():
    first, second = _quickstart_commands()
    assert first == "pip install torch==2.13.0 -e . && planner tune --vram 24GB"
    # the tests' own dependencies come with the command that runs them, torch pinned in the same line
    assert second.startswith("pip install torch==2.13.0 -e \".[test]\" && ") and second.endswith("python -m pytest -q")


def test_ci_runs_the_readme_test_command_verbatim():
    _, second = _quickstart_commands()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in ci if line and not line.startswith("#")]
    assert second in commands
    assert not [line for line in commands if "pytest" in line and line != second]  # no other test run
    assert not [line for line in commands if line.startswith("pip install") and "-e" in line and line != second]


def test_the_test_extra_installs_what_the_tests_import():
    line = re.search(r"^test = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)  # tomllib needs 3.11
    names = {re.split(r"[<>=\[ ]", req.strip().strip('"'), maxsplit=1)[0].lower() for req in line.split(",")}
    assert {"pytest", "psycopg2-binary"} <= names


def test_estimate_examples_are_the_commands_output():
    """Every ```console example of the estimate section, run now (`studies/readme_examples.py --write` refreshes them)."""
    spec = importlib.util.spec_from_file_location("readme_examples", ROOT / "studies" / "readme_examples.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    ran = []
    _, diffs = mod.process(README, ["estimate"], log=ran.append)
    assert len(ran) == 4  # every example ran (none skipped)
    assert not diffs, "README examples are stale; run `python studies/readme_examples.py --write`:\n" + "\n".join(diffs)
