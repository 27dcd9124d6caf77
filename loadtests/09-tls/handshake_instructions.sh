#!/usr/bin/env bash
# Instructions per full TLS 1.3 handshake (callgrind), server side, for Sluice
# and nginx with the same certificate: the deterministic counterpart of the
# "handshakes" case of run_tls.py, immune to other load on the machine.
# The server runs under callgrind; once it listens, the counters are zeroed
# (callgrind_control -z), one `openssl s_time -new` client (the run_tls.py
# client: full handshakes, no SNI, no request, no resumption) runs for T
# seconds, the counters are dumped (callgrind_control -d), and
# per handshake = instructions in that dump / handshakes s_time completed
# (startup and config parsing are not counted).
#   cargo build --release -p sluice && bash loadtests/09-tls/handshake_instructions.sh [sluice nginx]
# Env: KEY (rsa2048 | ecdsa-p256, default rsa2048), SUITES (TLS 1.3 suites
# the client offers, default TLS_AES_128_GCM_SHA256: the only suite nginx and
# HAProxy are configured with in run_tls.py), T (seconds of load, default 20),
# BIN (default target/release/sluice), PORT_BASE (default 19600; ports
# PB+443 Sluice, PB+81 Sluice admin, PB+543 nginx), KEEP=1 keeps the
# callgrind files (for callgrind_annotate) in $W.
set -u
cd "$(dirname "$0")"
W=${W:-$(mktemp -d /tmp/sluice-hs-cg.XXXX)}
BIN=${BIN:-"$(cd ../.. && pwd)/target/release/sluice"}
KEY=${KEY:-rsa2048}
SUITES=${SUITES:-TLS_AES_128_GCM_SHA256}
T=${T:-20}
PB=${PORT_BASE:-19600}
CASES=${*:-sluice nginx}
mkdir -p "$W/config" "$W/nginx/tmp"
case $KEY in
  rsa2048) algo=(-newkey rsa:2048) ;;
  ecdsa-p256) algo=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
  *) echo "KEY must be rsa2048 or ecdsa-p256" >&2; exit 64 ;;
esac
openssl req -x509 "${algo[@]}" -nodes -keyout "$W/key.pem" -out "$W/cert.pem" \
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
YAML
# nginx as in run_tls.py (TLS settings), one process, no proxying needed:
# the client sends no request.
cat > "$W/nginx/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path tmp;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256;
  ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  server {
    listen 127.0.0.1:$((PB + 543)) ssl http2 default_server;
    ssl_certificate $W/cert.pem;
    ssl_certificate_key $W/key.pem;
    location / { return 200 "ok\n"; }
  }
}
CONF
wait_port() { # port
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done
  echo "port $1 never opened" >&2; return 1
}
measure() { # case
  local port out pid
  case $1 in
    sluice) port=$((PB + 443))
      valgrind --tool=callgrind --callgrind-out-file="$W/$1.out" $BIN run --config "$W/config" \
        --bind 443=127.0.0.1:$port --admin 127.0.0.1:$((PB + 81)) >/dev/null 2>"$W/$1.err" & pid=$! ;;
    nginx) port=$((PB + 543))
      valgrind --tool=callgrind --callgrind-out-file="$W/$1.out" \
        nginx -p "$W/nginx/" -c "$W/nginx/nginx.conf" -e stderr >/dev/null 2>"$W/$1.err" & pid=$! ;;
  esac
  wait_port $port || { kill $pid; return 1; }
  sleep 2
  callgrind_control -z $pid >/dev/null; sleep 0.5
  out=$(openssl s_time -connect 127.0.0.1:$port -new -ciphersuites "$SUITES" -time "$T" 2>/dev/null)
  callgrind_control -d $pid >/dev/null
  local hs; hs=$(sed -n 's/^\([0-9]*\) connections in [0-9.]*s;.*/\1/p' <<<"$out" | head -1)
  [ "$1" = sluice ] && curl -s "http://127.0.0.1:$((PB + 81))/metrics" | grep '^sluice_tls_handshakes_total' \
    | tr '\n' ' ' > "$W/$1.metrics"
  kill -TERM $pid; wait $pid
  local ir; ir=$(grep -h "^summary\|^totals" "$W/$1.out.1" | head -1 | awk '{print $2}')
  echo "$1 $ir $hs $(( ir / hs ))"
  [ -s "$W/$1.metrics" ] && echo "  $(cat "$W/$1.metrics")"
}
echo "key $KEY, client TLS 1.3 suites $SUITES, $T s of one openssl s_time -new client"
echo "server instructions handshakes per_handshake"
for c in $CASES; do measure "$c"; done
[ -n "${KEEP:-}" ] && echo "callgrind files in $W" || rm -rf "$W"
