#!/usr/bin/env bash
# CI smoke of the load tests: a few seconds per scenario, Sluice only, no
# speed assertions. Fails on a failed request in scenarios 4 (canary shift)
# and 5 (config churn), on a 90/10 split off by more than 2 pp in scenario 3,
# and on any harness error. About 1-2 minutes after the release build.
#
#   bash loadtests/ci-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
exec python3 loadtests/run.py --smoke --no-install "$@"
