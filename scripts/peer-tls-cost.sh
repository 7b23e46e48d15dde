#!/usr/bin/env bash
# peer-tls-cost.sh: what mutual TLS between the hosts costs. Runs three
# `tandem agent` processes on 127.0.0.1-3 (volume v, 1 GiB, led by n1)
# without and with --peer-tls-* (certificates made with openssl as in
# deploy/README.md), alternating, ROUNDS times each, and measures with
# fio's nbd engine on n1: durable 4 KiB random writes at QD32 (write +
# flush, IOPS) and durable 1 MiB sequential writes at QD8 (MiB/s). Prints
# each run, then the medians and their ratios (TLS / plain).
#
#   scripts/peer-tls-cost.sh [ROUNDS]
#
# Needs fio (with its nbd engine), openssl, nbdinfo and bin/tandem (make
# build). Uses ports 11801-11813 on 127.0.0.1-3.
set -euo pipefail
rounds=${1:-3}
cd "$(dirname "$0")/.."
tandem=${TANDEM:-bin/tandem}
for p in fio openssl nbdinfo python3 "$tandem"; do command -v "$p" >/dev/null || { echo "missing: $p" >&2; exit 1; }; done
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# The certificates, as deploy/README.md makes them.
(
  cd "$work"
  umask 077
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=tandem-peers -keyout peer-ca.key -out peer-ca.crt 2>/dev/null
  for i in 1 2 3; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=n$i \
      -keyout n$i-peer.key -out n$i-peer.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.%d\nextendedKeyUsage=serverAuth,clientAuth\n' $i > n$i.ext
    openssl x509 -req -in n$i-peer.csr -CA peer-ca.crt -CAkey peer-ca.key -CAcreateserial \
      -days 2 -extfile n$i.ext -out n$i-peer.crt 2>/dev/null
  done
)

# run MODE: one cluster, both fio jobs; prints "IOPS MIBS".
run() {
  local mode=$1 d="$work/$1" peers="" i
  rm -rf "$d"
  mkdir -p "$d"
  for i in 1 2 3; do peers="$peers --peer n$i,raft=127.0.0.$i:1181$i,nbd=127.0.0.$i:1180$i"; done
  pids=()
  for i in 1 2 3; do
    local extra=()
    if [ "$mode" = tls ]; then
      extra=(--peer-tls-cert "$work/n$i-peer.crt" --peer-tls-key "$work/n$i-peer.key" --peer-tls-ca "$work/peer-ca.crt")
    fi
    # shellcheck disable=SC2086
    "$tandem" agent --name n$i --data "$d/n$i" --raft-listen 127.0.0.$i:1181$i --nbd-listen 127.0.0.$i:1180$i \
      $peers --volume v=1GiB,leader=n1 "${extra[@]}" > "$d/n$i.log" 2>&1 &
    pids+=($!)
  done
  local uri=nbd://127.0.0.1:11801/v
  for _ in $(seq 150); do
    nbdinfo --size "$uri" >/dev/null 2>&1 && break
    sleep 0.2
  done
  sleep 2 # n1 takes the lead (preferred leader)
  fio --name=w --ioengine=nbd --uri=$uri --rw=randwrite --bs=4k --iodepth=32 --fsync=1 --size=1g \
    --time_based --runtime=15 --output-format=json --output="$d/q32.json" >/dev/null
  fio --name=w --ioengine=nbd --uri=$uri --rw=write --bs=1m --iodepth=8 --fsync=1 --size=1g \
    --time_based --runtime=10 --output-format=json --output="$d/m1.json" >/dev/null
  kill "${pids[@]}"
  wait 2>/dev/null || true
  pids=()
  python3 - "$d/q32.json" "$d/m1.json" <<'EOF'
import json, sys
q = json.load(open(sys.argv[1]))["jobs"][0]["write"]["iops"]
m = json.load(open(sys.argv[2]))["jobs"][0]["write"]["bw"] / 1024
print(f"{q:.0f} {m:.0f}")
EOF
}

results=()
for r in $(seq "$rounds"); do
  for mode in plain tls; do
    res=$(run $mode)
    echo "round $r $mode: durable 4K QD32 ${res% *} writes/s, durable 1M QD8 ${res#* } MiB/s"
    results+=("$mode $res")
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics as st
rows = [l.split() for l in sys.stdin if l.strip()]
med = lambda mode, k: st.median(float(r[k]) for r in rows if r[0] == mode)
for k, name in ((1, "durable 4K QD32 writes/s"), (2, "durable 1M QD8 MiB/s")):
    p, t = med("plain", k), med("tls", k)
    print(f"{name}: plain {p:.0f}, tls {t:.0f}, tls/plain {t/p:.2f}x")
'
