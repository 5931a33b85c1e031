#!/usr/bin/env bash
# Proves SoftHSM and swtpm work on this machine before the tests run: a missing or broken emulator
# fails the test command here, loudly, instead of letting hardware tests skip.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
module=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
work=$(mktemp -d)
swtpm_pid=
cleanup() {
  [[ -n $swtpm_pid ]] && kill "$swtpm_pid" 2>/dev/null && wait "$swtpm_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "check-emulators: $*" >&2; exit 1; }

# SoftHSM: a fresh token in a private directory, listed by a PKCS#11 client we did not write.
[[ -e $module ]] || fail "SoftHSM module $module is missing: apt-get install softhsm2"
command -v pkcs11-tool >/dev/null || fail "pkcs11-tool is missing: apt-get install opensc"
eval "$("$here/softhsm-fixtures/init-token.sh" "$work/softhsm" keybound-check)"
pkcs11-tool --module "$module" --list-token-slots 2>/dev/null | grep -q "keybound-check" ||
  fail "SoftHSM token not visible through $module"

# swtpm: a TPM on a private TCP port, asked for random bytes by tpm2-tools.
command -v swtpm >/dev/null || fail "swtpm is missing: apt-get install swtpm swtpm-tools"
command -v tpm2_getrandom >/dev/null || fail "tpm2-tools is missing: apt-get install tpm2-tools"
mkdir "$work/tpm"
for attempt in 1 2 3 4 5; do
  port=$((20000 + 2 * (RANDOM % 6000)))
  swtpm socket --tpm2 --flags not-need-init,startup-clear --tpmstate dir="$work/tpm" \
    --server type=tcp,port=$port,bindaddr=127.0.0.1 --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 &
  swtpm_pid=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    kill -0 "$swtpm_pid" 2>/dev/null || break
    sleep 0.02
  done
  kill -0 "$swtpm_pid" 2>/dev/null && break
  swtpm_pid=
done
[[ -n $swtpm_pid ]] || fail "swtpm did not start"
TSS2_LOG=all+NONE tpm2_getrandom --tcti "swtpm:host=127.0.0.1,port=$port" --hex 8 >/dev/null ||
  fail "swtpm on port $port did not answer tpm2_getrandom"

echo "check-emulators: SoftHSM ($(softhsm2-util --version)) and swtpm ($(swtpm --version | head -1)) work" >&2
