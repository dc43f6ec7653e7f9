"""`planner` entry point: dispatches to one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pydantic import ValidationError

from planner import __version__
from planner.bnb import quiet_hub_kernel_warning
from planner.errors import PlannerError, from_pydantic

# one module per subcommand, each with add_parser(subparsers) that sets `func`
COMMANDS = ("estimate", "profile", "tune", "export", "report")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="planner", description="Memory-budget planner and autotuner for layer-wise sparse fine-tuning."
    )
    parser.add_argument("--version", action="version", version=f"planner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"planner.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers' config notices (e.g. gpt2's loss_type) are not the user's concern; errors still show
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    quiet_hub_kernel_warning()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except PlannerError as exc:
        print(f"planner {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValidationError as exc:
        print(f"planner {args.command}: error: {from_pydantic(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system's answer (permissions, a full disk) names the path; no traceback
        print(f"planner {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"planner {args.command}: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)  # 130 for Ctrl-C, 143 for SIGTERM (planner.tune.storage.signals)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
