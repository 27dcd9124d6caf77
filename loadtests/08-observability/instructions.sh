#!/usr/bin/env bash
# Instructions per proxied request (callgrind), per observability config.
set -u
cd "$(dirname "$0")"; mkdir -p /tmp/cg
BIN="$(cd ../.. && pwd)/target/release/sluice"   # cargo build --release --bin sluice first
$BIN echo --listen 127.0.0.1:19001 --pod blue --quiet --static-body >/dev/null 2>&1 & ECHO=$!
python3 sink.py 19300 & SINK=$!
sleep 0.5
measure() { # name n extra...
  local name=$1 n=$2; shift 2
  rm -f /tmp/cg/access.log
  valgrind --tool=callgrind --callgrind-out-file=/tmp/cg/$name-$n.out $BIN run --config "$PWD/config.yaml" \
    --bind 80=127.0.0.1:19080 --admin 127.0.0.1:19081 "$@" >/dev/null 2>/tmp/cg/$name-$n.err &
  local pid=$!
  for i in $(seq 200); do curl -s -o /dev/null -H 'Host: app.example.com' http://127.0.0.1:19080/ && break; sleep 0.2; done
  yes 'url = "http://127.0.0.1:19080/"' | head -n "$n" > /tmp/cg/urls.txt
  curl -s -H 'Host: app.example.com' -K /tmp/cg/urls.txt > /dev/null
  sleep 1
  kill -TERM $pid; wait $pid
  grep -h "^summary\|^totals" /tmp/cg/$name-$n.out | head -1 | awk '{print $2}'
}
for v in "baseline --no-request-metrics" "metrics" "accesslog --access-log /tmp/cg/access.log" \
\
         "trace100 --otlp-endpoint http://127.0.0.1:19300 --trace-sample-ratio 1"; do
  set -- $v; name=$1; shift
  a=$(measure $name 300 "$@"); b=$(measure $name 1300 "$@")
  echo "$name $a $b $(( (b - a) / 1000 ))" >> /dev/stdout
done
kill $ECHO $SINK
