#!/usr/bin/env bash
# Server CPU time (user + sys, from /proc/PID/stat) per full TLS 1.3
# handshake, natively: PROCS parallel `openssl s_time -new` clients pinned to
# the load core for SECONDS, server CPU consumed / handshakes completed.
# Unlike handshakes/s it does not depend on whether the clients or the server
# saturate first, and unlike wall time it barely moves with other load on the
# machine (cache and frequency effects remain: say the load average).
#   bash loadtests/09-tls/cpu_per_handshake.sh PID PORT [SECONDS] [PROCS]
# PID: the process doing the TLS work (Sluice; for nginx the worker
# process, or the only process with `master_process off`). Env: LOAD_CORE
# (default 1), SUITES (default TLS_AES_128_GCM_SHA256, as in run_tls.py).
set -u
pid=$1 port=$2 t=${3:-5} n=${4:-8}
core=${LOAD_CORE:-1}
suites=${SUITES:-TLS_AES_128_GCM_SHA256}
tick=$(getconf CLK_TCK)
W=$(mktemp -d /tmp/sluice-cpu-hs.XXXX)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
c0=$(cpu)
for i in $(seq "$n"); do
  taskset -c "$core" openssl s_time -connect "127.0.0.1:$port" -new -ciphersuites "$suites" -time "$t" \
    >"$W/s_time.$i" 2>/dev/null &
done
wait
c1=$(cpu)
hs=$(cat "$W"/s_time.* | sed -n 's/^\([0-9]*\) connections in [0-9.]*s;.*/\1/p' | awk '{s += $1} END {print s + 0}')
rm -rf "$W"
[ "$hs" -gt 0 ] || { echo "no handshake completed on port $port" >&2; exit 1; }
echo "port $port: $hs handshakes in ${t}s, server cpu $(( (c1 - c0) * 1000000 / tick / hs )) us/handshake," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg)"
