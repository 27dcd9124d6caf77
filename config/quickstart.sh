#!/usr/bin/env bash
# Starts Sluice on config/quickstart.yaml with two echo backends (blue on
# 127.0.0.1:9001, green on 127.0.0.1:9002); Sluice listens on
# 127.0.0.1:8080. Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin sluice
bin=target/release/sluice
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
"$bin" echo --listen 127.0.0.1:9001 --pod blue --namespace default --quiet & pids+=($!)
"$bin" echo --listen 127.0.0.1:9002 --pod green --namespace default --quiet & pids+=($!)
"$bin" run --config config/quickstart.yaml --bind 80=127.0.0.1:8080 --admin 127.0.0.1:9901 & pids+=($!)
cat <<'MSG'

Sluice is up. In another terminal:
  curl -s http://127.0.0.1:8080/ | grep '"pod"'
  for i in $(seq 100); do curl -s http://127.0.0.1:8080/ | grep -o '"pod": "[a-z]*"'; done | sort | uniq -c
  curl -s http://127.0.0.1:9901/config
Edit the weights in config/quickstart.yaml and the split follows, live.
MSG
wait
