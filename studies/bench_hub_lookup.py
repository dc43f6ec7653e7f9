"""How long a hub id that is not cached takes to fail: offline, and with the hub's address not answering.

    python studies/bench_hub_lookup.py [--repeat 5] [--transformers]

Each lookup runs the installed command in a fresh process (``planner estimate --model nobody-here/no-such-model``),
so the figures include Python's start and planner's imports; ``--transformers`` adds transformers' own lookup of
the same id against the same closed port (``AutoConfig.from_pretrained``, which retries before it fails). The tests
check what the lookups do on the network (tests/test_units_spec.py: no connection offline, one refused connect and
no retry otherwise); the seconds are here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

CLOSED = "http://127.0.0.1:9"  # a local port nothing listens on: refused at once, as a machine without network
NO_PROXY = {v: "" for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")}
CASES = {
    "offline (HF_HUB_OFFLINE=1)": {"HF_HUB_OFFLINE": "1"},
    f"hub not answering ({CLOSED})": {
        "HF_HUB_OFFLINE": "",
        "TRANSFORMERS_OFFLINE": "",
        "HF_ENDPOINT": CLOSED,
        **NO_PROXY,
    },
}
TRANSFORMERS = (
    "from transformers import AutoConfig\n"
    "try:\n    AutoConfig.from_pretrained('nobody-here/no-such-model')\nexcept Exception:\n    pass\n"
)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env})
    return time.perf_counter() - start, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--transformers", action="store_true", help="also time transformers' own lookup (tens of seconds)")
    args = ap.parse_args()
    planner = shutil.which("planner") or sys.exit("the planner command must be installed (pip install -e .)")
    baseline = [timed([sys.executable, "-c", "import planner.cli.main"], {})[0] for _ in range(args.repeat)]
    print(f"python start + planner imports: median {statistics.median(baseline):.2f} s over {args.repeat}")
    for name, env in CASES.items():
        runs = [timed([planner, "estimate", "--model", "nobody-here/no-such-model"], env) for _ in range(args.repeat)]
        codes = sorted({code for _, code in runs})
        seconds = [s for s, _ in runs]
        print(
            f"planner estimate, {name}: median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s, "
            f"exit {codes}"
        )
    if args.transformers:
        seconds, _ = timed([sys.executable, "-c", TRANSFORMERS], CASES[f"hub not answering ({CLOSED})"])
        print(f"transformers AutoConfig.from_pretrained, hub not answering: {seconds:.2f} s")


if __name__ == "__main__":
    main()
