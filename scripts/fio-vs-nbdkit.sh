#!/usr/bin/env bash
# fio-vs-nbdkit.sh: the foundation's acceptance measurement. Serves the same
# 1 GiB of random data from `nbdkit file` and from `tandem agent`, as a
# local volume (a file served as it is, durable on FLUSH/FUA like nbdkit's)
# and as a replicated volume with its one replica (every write durable in
# its log before it is acknowledged), all files in one directory (one
# filesystem); runs each fio job against the three, interleaved, ROUNDS
# times, and prints medians and ratios to nbdkit.
#
#   scripts/fio-vs-nbdkit.sh [ROUNDS] [RUNTIME_SECONDS]
#
# Needs fio (with its nbd engine), nbdkit and bin/tandem (make build).
set -euo pipefail
rounds=${1:-5}
runtime=${2:-5}
cd "$(dirname "$0")/.."
tandem=${TANDEM:-bin/tandem}
for p in fio nbdkit "$tandem"; do command -v "$p" >/dev/null || { echo "missing: $p" >&2; exit 1; }; done
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/tandem/groups/vol0" "$work/tandem/local"
# The files are written the same way, in 64 KiB writes: Linux caches a
# file in folios as large as the writes that filled it, and small writes
# into large folios cost more (docs/replication.md, "Volume files"); cp
# would give the volume files larger folios than nbdkit's.
dd if=/dev/urandom of="$work/nbdkit.img" bs=64k count=16384 status=none
dd if="$work/nbdkit.img" of="$work/tandem/groups/vol0/volume.img" bs=64k status=none   # the replica's volume file
dd if="$work/nbdkit.img" of="$work/tandem/local/loc0.img" bs=64k status=none           # the local volume's file
nbdkit -f -p 10899 --exit-with-parent file "$work/nbdkit.img" & pids+=($!)
"$tandem" agent --data "$work/tandem" --volume vol0=1G --volume loc0=1G,local --nbd-listen 127.0.0.1:10898 2>"$work/tandem.log" & pids+=($!)
sleep 1
A=nbd://127.0.0.1:10899/ L=nbd://127.0.0.1:10898/loc0 R=nbd://127.0.0.1:10898/vol0

run() { # uri rw bs qd [fio args] -> IOPS (read+write)
  local uri=$1 rw=$2 bs=$3 qd=$4; shift 4
  fio --name=j --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$qd" --size=1G \
      --time_based --runtime="$runtime" --output-format=json --output="$work/fio.json" "$@" >/dev/null 2>&1
  python3 -c "import json; j=json.load(open('$work/fio.json'))['jobs'][0]; print(j['read']['iops']+j['write']['iops'])"
}
compare() { # label rw bs qd [fio args]
  local label=$1; shift
  local a=() l=() r=()
  for _ in $(seq "$rounds"); do a+=("$(run $A "$@")"); l+=("$(run $L "$@")"); r+=("$(run $R "$@")"); done
  python3 - "$label" "${a[*]}" "${l[*]}" "${r[*]}" "$2" <<'PY'
import sys, statistics as st
label, a, l, r, bs = sys.argv[1], *(list(map(float, x.split())) for x in sys.argv[2:5]), sys.argv[5]
mul = {'4k': 4096, '64k': 65536, '1M': 1 << 20}[bs] / (1 << 20)
def cell(x):
    return f"{st.median(x):,.0f} IOPS ({st.median(x)*mul:,.0f} MiB/s)"
def ratio(x):
    rs = [y / z for z, y in zip(a, x)]
    return f"**{st.median(x)/st.median(a):.2f}** ({min(rs):.2f}-{max(rs):.2f})"
print(f"| {label} | {cell(a)} | {cell(l)} | {ratio(l)} | {cell(r)} | {ratio(r)} |")
PY
}
echo "| fio job (1 connection) | nbdkit file (median) | tandem local volume (median) | ratio (per round) | tandem replicated, 1 replica (median) | ratio (per round) |"
echo "|---|---|---|---|---|---|"
compare "4 KiB random read QD32" randread 4k 32
compare "1 MiB sequential read QD8" read 1M 8
compare "4 KiB random write QD32" randwrite 4k 32
compare "4 KiB random read QD1" randread 4k 1
compare "64 KiB sequential read QD16" read 64k 16
compare "4 KiB random write QD1, flush after each" randwrite 4k 1 --fsync=1
