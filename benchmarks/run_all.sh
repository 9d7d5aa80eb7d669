#!/usr/bin/env bash
# Runs every benchmark whose figures are quoted in benchmarks/RESULTS.md, one after the
# other (never in parallel: the machine is small and timing matters), into benchmarks/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/aios
PY=.venv/bin/python
$PY benchmarks/overhead.py | tee benchmarks/out/overhead.md
$B bench react-batch --policy fifo,priority,las,fair --out benchmarks/out/react-batch
$B bench react-open --policy fifo,las,fair,rr --out benchmarks/out/react-open
$B bench react-open-overload --policy fifo,las --out benchmarks/out/react-open-overload
$B bench mixed --policy fifo,priority-nopreempt,priority,las --out benchmarks/out/mixed
$B bench longgen --policy fifo,rr,las-nopreempt,las --out benchmarks/out/longgen
$B bench fairness --policy fifo,las,fair --out benchmarks/out/fairness
$B bench ratelimited --policy fifo,las --out benchmarks/out/ratelimited
$B bench scale --policy fifo,las --out benchmarks/out/scale
$B bench tools --policy fifo,priority --out benchmarks/out/tools
