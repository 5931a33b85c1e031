#!/usr/bin/env bash
# Runs every fuzz target (fuzz/) for a bounded time: scripts/fuzz.sh [SECONDS per target, default 60] [TARGET...]
# Needs cargo-fuzz (cargo install cargo-fuzz --locked). cargo-fuzz needs nightly compiler flags;
# RUSTC_BOOTSTRAP=1 lets a stable toolchain accept them. Each target starts from seeds copied from
# the test data; a crash stops the script with the input under fuzz/artifacts/<target>/. Keep it
# as a regression test: copy it to tests/data/fuzz-regressions/<target>/ and fix the cause.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(config_yaml private_key_pem private_key_env pkcs11_uri tss2_key_file challenge_document server_messages attest_evidence)
fi
if ! command -v cargo-fuzz >/dev/null; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 1
fi
export RUSTC_BOOTSTRAP=1
# libtss2 prints its own errors to stderr unless told not to.
export TSS2_LOG=all+NONE

seed() {
    local target=$1 dir=fuzz/corpus/$1
    mkdir -p "$dir"
    case $target in
        config_yaml) cp tests/data/*.yaml "$dir/" ;;
        private_key_pem) cp backends/soft/tests/data/*.pem "$dir/" ;;
        private_key_env)
            for f in backends/soft/tests/data/*.pem; do
                base64 -w0 "$f" > "$dir/$(basename "$f").b64"
            done ;;
        pkcs11_uri)
            printf 'pkcs11:token=agent;object=bot;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin' > "$dir/uri1"
            printf 'pkcs11:model=SoftHSM%%20v2;manufacturer=SoftHSM%%20project;serial=abc;token=t;id=%%01%%02' > "$dir/uri2" ;;
        tss2_key_file) ;;
        challenge_document)
            # sub is the key ID of the target's fixed key (CHALLENGE_KEY_ID in fuzz/src/lib.rs).
            printf '{"iss":"c","sub":"BuP9j9opu2CrWVV95h7bCuzbIxE0vjDnW0Vfjht5L6k","aud":"c","exp":1760000060,"nbf":1759999990,"iat":1760000000,"nonce":"0123456789abcdef0123456789abcdef"}' > "$dir/doc1" ;;
        server_messages) ;;
        attest_evidence) ;;
    esac
    cp tests/data/fuzz-regressions/"$target"/* "$dir/" 2>/dev/null || true
}

for target in "${targets[@]}"; do
    seed "$target"
    echo "== $target: ${seconds}s"
    mkdir -p fuzz/artifacts
    log=fuzz/artifacts/$target.log
    status=0
    (cd fuzz && cargo fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
        -print_final_stats=1) >"$log" 2>&1 || status=$?
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+ +DONE' "$log" || true
    if [ "$status" -ne 0 ]; then
        grep -E 'panicked|SUMMARY|ERROR|^error' "$log" >&2 || tail -20 "$log" >&2
        echo "$target: failed (exit $status); log $log, inputs in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
