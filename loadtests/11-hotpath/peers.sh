#!/usr/bin/env bash
# Instructions per proxied request (callgrind, user space) for nginx and
# HAProxy in the cases of instructions.sh, so Sluice's figures have a
# reference measured the same way: same backend (`sluice echo
# --static-body`), same clients, same ECDSA P-256 certificate, TLS 1.3, one
# worker/thread each. Per request = (I(300 + N) - I(300)) / N.
#   bash loadtests/11-hotpath/peers.sh [h1c8 h1tls h2tls]
# Env: N (default 5000), PORT_BASE (default 19500), PEERS (default "nginx
# haproxy"), BIN (Sluice binary for the echo backend, default
# target/release/sluice).
set -u
cd "$(dirname "$0")"
W=$(mktemp -d /tmp/sluice-peers-cg.XXXX)
BIN=${BIN:-"$(cd ../.. && pwd)/target/release/sluice"}
N=${N:-5000}
PB=${PORT_BASE:-19500} # ports PB+1 (backend), PB+80, PB+443
CASES=${*:-h1c8 h1tls h2tls}
PEERS=${PEERS:-nginx haproxy}
$BIN echo --listen 127.0.0.1:$((PB + 1)) --pod blue --quiet --static-body >/dev/null 2>&1 & ECHO=$!
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$W/key.pem" -out "$W/cert.pem" \
  -days 7 -subj /CN=app.example.com -addext subjectAltName=DNS:app.example.com >/dev/null 2>&1
cat "$W/cert.pem" "$W/key.pem" > "$W/combined.pem"
mkdir -p "$W/tmp"
cat > "$W/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $W/tmp; proxy_temp_path $W/tmp; fastcgi_temp_path $W/tmp; uwsgi_temp_path $W/tmp; scgi_temp_path $W/tmp;
  keepalive_requests 1000000;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host \$host;
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_set_header X-Forwarded-Proto \$scheme;
  ssl_protocols TLSv1.3;
  upstream be { server 127.0.0.1:$((PB + 1)); keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$((PB + 80));
    listen 127.0.0.1:$((PB + 443)) ssl http2;
    ssl_certificate $W/cert.pem;
    ssl_certificate_key $W/key.pem;
    location / { proxy_pass http://be; }
  }
}
CONF
cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 1
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option forwardfor
frontend fe
  bind 127.0.0.1:$((PB + 80))
  bind 127.0.0.1:$((PB + 443)) ssl crt $W/combined.pem alpn h2,http/1.1
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  default_backend be
backend be
  server blue 127.0.0.1:$((PB + 1))
CONF
load() { # case n
  case $1 in
    h1c8) h2load --h1 -n "$2" -c8 -m1 --connect-to 127.0.0.1:$((PB + 80)) http://app.example.com:$((PB + 80))/ > "$W/h2load.txt" ;;
    h1tls) h2load --h1 -n "$2" -c8 -m1 --connect-to 127.0.0.1:$((PB + 443)) https://app.example.com:$((PB + 443))/ > "$W/h2load.txt" ;;
    h2tls) h2load -n "$2" -c1 -m10 --connect-to 127.0.0.1:$((PB + 443)) https://app.example.com:$((PB + 443))/ > "$W/h2load.txt" ;;
  esac
  grep -q "$2 succeeded, 0 failed" "$W/h2load.txt" || echo "WARNING: $1: not every request succeeded" >&2
  [ "$1" != h2tls ] || grep -q "Application protocol: h2" "$W/h2load.txt" || echo "WARNING: $1: not h2" >&2
}
measure() { # peer case n
  case $1 in
    nginx) valgrind --tool=callgrind --callgrind-out-file="$W/$1-$2-$3.out" nginx -p "$W/" -c "$W/nginx.conf" >/dev/null 2>"$W/$1.err" & ;;
    haproxy) valgrind --tool=callgrind --callgrind-out-file="$W/$1-$2-$3.out" haproxy -db -f "$W/haproxy.cfg" >/dev/null 2>"$W/$1.err" & ;;
  esac
  local pid=$!
  for i in $(seq 200); do curl -s -o /dev/null http://127.0.0.1:$((PB + 80))/ && break; sleep 0.2; done
  load "$2" "$3"
  # Stop and wait for callgrind to write its file (TERM only if INT is ignored).
  kill -INT $pid 2>/dev/null
  for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  kill -TERM $pid 2>/dev/null; wait $pid
  grep -h "^summary\|^totals" "$W/$1-$2-$3.out" | head -1 | awk '{print $2}'
}
echo "peer case instructions@300 instructions@$((300 + N)) per_request"
for p in $PEERS; do
  for c in $CASES; do
    a=$(measure "$p" "$c" 300); b=$(measure "$p" "$c" $((300 + N)))
    echo "$p $c $a $b $(( (b - a) / N ))"
  done
done
kill $ECHO
rm -rf "$W"
