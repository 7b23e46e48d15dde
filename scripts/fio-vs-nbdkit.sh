#!/usr/bin/env bash
# fio-vs-nbdkit.sh: the foundation's acceptance measurement. Serves the same
# 1 GiB of random data from `nbdkit file` and from `tandem agent` (files in
# one directory, so one filesystem), then runs each fio job against both,
# interleaved nbdkit/tandem, ROUNDS times, and prints medians and ratios.
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
mkdir -p "$work/tandem/groups/vol0"
# Both files are written the same way, in 64 KiB writes: Linux caches a
# file in folios as large as the writes that filled it, and small writes
# into large folios cost more (docs/replication.md, "Volume files"); cp
# would give the volume file larger folios than nbdkit's.
dd if=/dev/urandom of="$work/nbdkit.img" bs=64k count=16384 status=none
dd if="$work/nbdkit.img" of="$work/tandem/groups/vol0/volume.img" bs=64k status=none   # the replica's volume file
nbdkit -f -p 10899 --exit-with-parent file "$work/nbdkit.img" & pids+=($!)
"$tandem" agent --data "$work/tandem" --volume vol0=1G --nbd-listen 127.0.0.1:10898 2>"$work/tandem.log" & pids+=($!)
sleep 1
A=nbd://127.0.0.1:10899/ B=nbd://127.0.0.1:10898/vol0

run() { # uri rw bs qd [fio args] -> IOPS (read+write)
  local uri=$1 rw=$2 bs=$3 qd=$4; shift 4
  fio --name=j --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$qd" --size=1G \
      --time_based --runtime="$runtime" --output-format=json --output="$work/fio.json" "$@" >/dev/null 2>&1
  python3 -c "import json; j=json.load(open('$work/fio.json'))['jobs'][0]; print(j['read']['iops']+j['write']['iops'])"
}
compare() { # label rw bs qd [fio args]
  local label=$1; shift
  local a=() b=()
  for _ in $(seq "$rounds"); do a+=("$(run $A "$@")"); b+=("$(run $B "$@")"); done
  python3 - "$label" "${a[*]}" "${b[*]}" "$2" <<'PY'
import sys, statistics as st
label, a, b, bs = sys.argv[1], list(map(float, sys.argv[2].split())), list(map(float, sys.argv[3].split())), sys.argv[4]
mul = {'4k': 4096, '64k': 65536, '1M': 1 << 20}[bs] / (1 << 20)
r = [y / x for x, y in zip(a, b)]
print(f"| {label} | {st.median(a):,.0f} IOPS ({st.median(a)*mul:,.0f} MiB/s) | {st.median(b):,.0f} IOPS ({st.median(b)*mul:,.0f} MiB/s) | {st.median(b)/st.median(a):.2f} | {min(r):.2f}-{max(r):.2f} |")
PY
}
echo "| fio job (1 connection) | nbdkit file (median) | tandem (median) | ratio of medians | per-round ratios |"
echo "|---|---|---|---|---|"
compare "4 KiB random read QD32" randread 4k 32
compare "1 MiB sequential read QD8" read 1M 8
compare "4 KiB random write QD32" randwrite 4k 32
compare "4 KiB random read QD1" randread 4k 1
compare "64 KiB sequential read QD16" read 64k 16
compare "4 KiB random write QD1, flush after each" randwrite 4k 1 --fsync=1
