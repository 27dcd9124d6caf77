#!/usr/bin/env bash
# Instructions per proxied request (callgrind) without a rate limit and with
# a never-refusing limit in each mode: immune to other load on the machine,
# unlike RPS. Per request = (I(300 + N requests) - I(300 requests)) / N,
# N = ${N:-5000} (large, so start-up variance, e.g. clock calibration, is amortised).
#   cargo build --release -p sluice && bash loadtests/10-ratelimit/instructions.sh
set -u
cd "$(dirname "$0")"
W=$(mktemp -d /tmp/sluice-rl-cg.XXXX)
BIN="$(cd ../.. && pwd)/target/release/sluice"
$BIN echo --listen 127.0.0.1:19001 --pod blue --quiet --static-body >/dev/null 2>&1 & ECHO=$!
redis-server --port 19379 --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & REDIS=$!
sleep 0.5
config() { # mode (empty: no policy)
  mkdir -p "$W/$1"
  cat > "$W/$1/sluice.yaml" <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice}
spec: {controllerName: sluice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec: {gatewayClassName: sluice, listeners: [{name: http, protocol: HTTP, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: default}
spec: {parentRefs: [{name: web}], rules: [{backendRefs: [{name: blue, port: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: blue, namespace: default}
spec: {ports: [{name: http, port: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: blue-local, namespace: default, labels: {kubernetes.io/service-name: blue}}
addressType: IPv4
ports: [{name: http, port: 19001}]
endpoints: [{addresses: ["127.0.0.1"]}]
YAML
  if [ "$1" != none ]; then
    cat >> "$W/$1/sluice.yaml" <<YAML
---
apiVersion: policy.sluice.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: app, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}]
  mode: $1
  limit: {requests: 1000000000, unit: Second, burst: 1000000000}
YAML
  fi
}
measure() { # mode n
  valgrind --tool=callgrind --callgrind-out-file="$W/$1-$2.out" $BIN run --config "$W/$1" \
    --bind 80=127.0.0.1:19080 --admin 127.0.0.1:19081 --redis-url redis://127.0.0.1:19379 >/dev/null 2>"$W/$1-$2.err" &
  local pid=$!
  for i in $(seq 200); do curl -s -o /dev/null http://127.0.0.1:19080/ && break; sleep 0.2; done
  yes 'url = "http://127.0.0.1:19080/"' | head -n "$2" > "$W/urls.txt"
  curl -s -K "$W/urls.txt" > /dev/null
  sleep 1
  kill -TERM $pid; wait $pid
  grep -h "^summary\|^totals" "$W/$1-$2.out" | head -1 | awk '{print $2}'
}
N=${N:-5000}
echo "mode instructions@300 instructions@$((300 + N)) per_request"
for m in none Local Cluster Redis; do
  config $m
  a=$(measure $m 300); b=$(measure $m $((300 + N)))
  echo "$m $a $b $(( (b - a) / N ))"
done
kill $ECHO $REDIS
rm -rf "$W"
