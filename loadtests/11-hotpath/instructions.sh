#!/usr/bin/env bash
# Instructions per proxied request (callgrind) on the plain request path:
# HTTP/1.1 keep-alive (curl, one connection, sequential), HTTP/1.1 with 8
# concurrent connections (h2load --h1) and h2c prior knowledge (h2load, one
# connection, 10 concurrent streams), and over TLS (ECDSA P-256, TLS 1.3):
# h2 by ALPN (h2tls: one connection, 10 streams) and HTTP/1.1 by ALPN
# (h1tls: 8 connections). Immune to other load on the machine,
# unlike RPS. Per request = (I(300 + N requests) - I(300 requests)) / N.
#   cargo build --release -p sluice && bash loadtests/11-hotpath/instructions.sh [h1 h1c8 h2c h1tls h2tls]
# Env: N (default 5000), BIN (default target/release/sluice), PORT_BASE (default
# 19000; set another when two runs share the machine), KEEP=1 keeps
# the callgrind files (for callgrind_annotate) in $W.
set -u
cd "$(dirname "$0")"
W=${W:-$(mktemp -d /tmp/sluice-hot-cg.XXXX)}
BIN=${BIN:-"$(cd ../.. && pwd)/target/release/sluice"}
N=${N:-5000}
PB=${PORT_BASE:-19000} # ports PB+1 (backend), PB+80, PB+443, PB+81 (admin)
CASES=${*:-h1 h1c8 h2c h1tls h2tls}
$BIN echo --listen 127.0.0.1:$((PB + 1)) --pod blue --quiet --static-body >/dev/null 2>&1 & ECHO=$!
mkdir -p "$W/config"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$W/key.pem" -out "$W/cert.pem" \
  -days 7 -subj /CN=app.example.com -addext subjectAltName=DNS:app.example.com >/dev/null 2>&1
cat > "$W/config/sluice.yaml" <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice}
spec: {controllerName: sluice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  gatewayClassName: sluice
  listeners:
  - {name: http, protocol: HTTP, port: 80}
  - {name: https, protocol: HTTPS, port: 443, tls: {certificateRefs: [{name: app-tls}]}}
---
apiVersion: v1
kind: Secret
metadata: {name: app-tls, namespace: default}
type: kubernetes.io/tls
data: {tls.crt: $(base64 -w0 "$W/cert.pem"), tls.key: $(base64 -w0 "$W/key.pem")}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: default}
spec: {parentRefs: [{name: web}], hostnames: [app.example.com], rules: [{backendRefs: [{name: blue, port: 8080}]}]}
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
ports: [{name: http, port: $((PB + 1))}]
endpoints: [{addresses: ["127.0.0.1"]}]
YAML
URL=http://127.0.0.1:$((PB + 80))/
load() { # case n; every request must get a 2xx (a 4xx path is cheaper and would skew the figure)
  case $1 in
    h1) yes "url = \"$URL\"
output = \"/dev/null\"" | head -n "$(( 2 * $2 ))" > "$W/urls.txt"
        bad=$(curl -s -w '%{http_code}\n' -H 'Host: app.example.com' -K "$W/urls.txt" | grep -vc '^200$') ;;
    h1c8) h2load --h1 -n "$2" -c8 -m1 --connect-to 127.0.0.1:$((PB + 80)) http://app.example.com:$((PB + 80))/ > "$W/h2load.txt"
        bad=$(grep -q "$2 succeeded, 0 failed" "$W/h2load.txt" && echo 0 || echo 1) ;;
    h2c) h2load -n "$2" -c1 -m10 -H ":authority: app.example.com" "$URL" > "$W/h2load.txt"
        bad=$(grep -q "$2 succeeded, 0 failed" "$W/h2load.txt" && echo 0 || echo 1) ;;
    h1tls) h2load --h1 -n "$2" -c8 -m1 --connect-to 127.0.0.1:$((PB + 443)) https://app.example.com:$((PB + 443))/ > "$W/h2load.txt"
        bad=$(grep -q "$2 succeeded, 0 failed" "$W/h2load.txt" && echo 0 || echo 1) ;;
    h2tls) h2load -n "$2" -c1 -m10 --connect-to 127.0.0.1:$((PB + 443)) https://app.example.com:$((PB + 443))/ > "$W/h2load.txt"
        bad=$(grep -q "$2 succeeded, 0 failed" "$W/h2load.txt" && grep -q "Application protocol: h2" "$W/h2load.txt" && echo 0 || echo 1) ;;
  esac
  [ "$bad" = 0 ] || echo "WARNING: $1: not every request succeeded" >&2
}
measure() { # case n
  valgrind --tool=callgrind --callgrind-out-file="$W/$1-$2.out" $BIN run --config "$W/config" \
    --bind 80=127.0.0.1:$((PB + 80)) --bind 443=127.0.0.1:$((PB + 443)) --admin 127.0.0.1:$((PB + 81)) >/dev/null 2>"$W/$1-$2.err" &
  local pid=$!
  for i in $(seq 200); do curl -s -o /dev/null -H 'Host: app.example.com' $URL && break; sleep 0.2; done
  load "$1" "$2"
  sleep 1
  kill -TERM $pid; wait $pid
  grep -h "^summary\|^totals" "$W/$1-$2.out" | head -1 | awk '{print $2}'
}
echo "case instructions@300 instructions@$((300 + N)) per_request"
for c in $CASES; do
  a=$(measure "$c" 300); b=$(measure "$c" $((300 + N)))
  echo "$c $a $b $(( (b - a) / N ))"
done
kill $ECHO
[ -n "${KEEP:-}" ] && echo "callgrind files in $W" || rm -rf "$W"
