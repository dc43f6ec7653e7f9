#!/bin/bash
# The README's first command as a new user runs it: a fresh clone of COMMIT, a fresh venv, HOME (and with it the
# pip, Hugging Face and planner caches) an empty folder; `pip install torch==2.13.0 -e .`, then
# `planner tune --vram 24GB`, each timed. Before it, the machine's speed at that moment: the CPU seconds of one
# LISA run of the built-in proxy (50 steps, one thread; studies/bench_proxy_speed.py), since a shared machine's
# speed drifts and wall times are comparable only beside it.
#
#   bash studies/fresh_quickstart.sh COMMIT [WORKDIR]   # appends nothing: copy its lines into reports/
set -u
commit=${1:?usage: fresh_quickstart.sh COMMIT [WORKDIR]}
work=${2:-$(mktemp -d)}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$work/home"
git clone -q "$here" "$work/p" && cd "$work/p" && git checkout -q "$commit" || exit 1
speed=$(python "$here/studies/bench_proxy_speed.py" --points lisa --steps 50 2>/dev/null | grep -o '^lisa: [0-9.]* CPU s')
python3 -m venv "$work/venv" && . "$work/venv/bin/activate"
export HOME=$work/home PLANNER_CACHE_DIR=$work/home/cache COLUMNS=120
echo "commit $commit; speed index (one LISA run, 50 steps): ${speed#lisa: }; load $(cut -d' ' -f1-3 /proc/loadavg)"
t0=$(date +%s.%N)
pip install -q torch==2.13.0 -e . >"$work/pip.txt" 2>&1 || { tail "$work/pip.txt"; exit 1; }
t1=$(date +%s.%N)
/usr/bin/time -f "%e s wall, %U s user, %S s sys (workers included)" planner tune --vram 24GB >"$work/out.txt" 2>"$work/err.txt"
rc=$?
echo "pip install $(printf '%.0f' "$(echo "$t1 - $t0" | bc)") s; planner tune exit $rc: $(tail -1 "$work/err.txt"); load $(cut -d' ' -f1-3 /proc/loadavg)"
grep -E "^tune: trial 24/24|^learning-rate|^confirming|^tune: trial 8/8|^tune: trial 18/18|^trials:|^signal|^no signal" \
    "$work/out.txt" | sed 's/ (#[^|]*|.*| / /' | cut -c1-160
echo "full output: $work/out.txt"
