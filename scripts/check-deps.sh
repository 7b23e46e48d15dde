#!/usr/bin/env bash
# check-deps.sh test|bench: says exactly which programs a make target needs
# and which Debian packages provide the missing ones.
set -euo pipefail
declare -A pkg=(
  [qemu-io]=qemu-utils [qemu-img]=qemu-utils [qemu-system-x86_64]=qemu-system-x86
  [nbdinfo]=libnbd-bin [nbdsh]=libnbd-bin [nbdcopy]=libnbd-bin
  [nbdkit]=nbdkit [fio]=fio [ip]=iproute2 [openssl]=openssl
)
case "${1:-test}" in
  test)  need=(qemu-io qemu-img qemu-system-x86_64 nbdinfo nbdsh nbdcopy nbdkit fio openssl) ;;
  bench) need=(nbdkit fio) ;;
  *) echo "usage: $0 test|bench" >&2; exit 2 ;;
esac
missing=() pkgs=()
for p in "${need[@]}"; do
  if ! command -v "$p" >/dev/null; then
    missing+=("$p"); pkgs+=("${pkg[$p]}")
  fi
done
if [ "${1:-test}" = test ] && ! /usr/bin/python3 -c 'import nbd' 2>/dev/null; then
  missing+=("python3 module nbd (for nbdsh)"); pkgs+=(python3-libnbd)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]}" >&2
  echo "install them with:  sudo apt-get install -y $(printf '%s\n' "${pkgs[@]}" | sort -u | tr '\n' ' ')" >&2
  echo "(or run: sudo bash .ci/run, which installs everything and runs the tests)" >&2
  exit 1
fi
