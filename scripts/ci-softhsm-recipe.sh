#!/usr/bin/env bash
# The steps of docs/recipes/github-actions.yml: check the setup with `keybound doctor`, join with
# the bound key held in a SoftHSM (or any PKCS#11) token, and leave role-impersonated
# certificates in OUT_DIR for the job's later steps. `make test` runs this same script against a
# local dev cluster (tests/integration/recipes.rs).
#
# Environment (what the workflow sets):
#   TELEPORT_PROXY       the Teleport Proxy, host:port                                  (required)
#   TELEPORT_BOT_TOKEN   the bound_keypair join token's name                            (required)
#   PKCS11_URI           the key, e.g. pkcs11:token=ci;object=bound-key                 (required)
#   HSM_PIN              the token's user PIN (a secret; passed as --pin-source env:HSM_PIN)
#   SOFTHSM2_CONF        SoftHSM's configuration, naming the token store (SoftHSM only)
#   PKCS11_MODULE        default /usr/lib/softhsm/libsofthsm2.so
#   OUT_DIR              where the certificates go; default $RUNNER_TEMP/machine-id, else ./machine-id
#   STORAGE              the bot's own storage; default memory:// (every run joins with the
#                        static key, which the token's `recovery.mode: insecure` allows)
#   CA_PATH              the cluster's CA bundle, when its proxy has a private CA
#   KEYBOUND             the keybound binary; default `keybound` on PATH
#   GITHUB_ENV           set by GitHub Actions: TELEPORT_IDENTITY_FILE and MACHINE_ID_DIR are
#                        appended to it for the later steps
set -euo pipefail

die() { echo "ci-softhsm-recipe: $*" >&2; exit 1; }

kb=${KEYBOUND:-keybound}
module=${PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
out=${OUT_DIR:-${RUNNER_TEMP:-.}/machine-id}
storage=${STORAGE:-memory://}

[[ -n ${TELEPORT_PROXY:-} ]] || die "TELEPORT_PROXY is not set: give the Teleport Proxy as host:port"
[[ -n ${TELEPORT_BOT_TOKEN:-} ]] || die "TELEPORT_BOT_TOKEN is not set: give the bound_keypair join token's name"
[[ -n ${PKCS11_URI:-} ]] || die "PKCS11_URI is not set: e.g. pkcs11:token=ci;object=bound-key"
[[ -n ${HSM_PIN:-} ]] || die "HSM_PIN is not set: pass the token PIN from a secret"
command -v "$kb" >/dev/null || die "$kb not found: install keybound or set KEYBOUND"
[[ -f $module ]] || die "PKCS#11 module $module not found: apt-get install softhsm2, or set PKCS11_MODULE"
if [[ $module == *softhsm* && -z ${SOFTHSM2_CONF:-} ]]; then
  die "SOFTHSM2_CONF is not set: point it at the runner's token store (SoftHSM reads it once, at load)"
fi

args=(--join-method bound_keypair --signer pkcs11 --pkcs11-module "$module"
      --pkcs11-uri "$PKCS11_URI" --pin-source env:HSM_PIN --require-hardware-key
      --storage "$storage")
[[ -n ${CA_PATH:-} ]] && args+=(--ca-path "$CA_PATH")
# --proxy-server and --token come from TELEPORT_PROXY and TELEPORT_BOT_TOKEN, which keybound reads.

echo "::group::keybound doctor"
"$kb" doctor "${args[@]}"
echo "::endgroup::"

echo "::group::keybound start --oneshot"
"$kb" start --oneshot "${args[@]}" --destination-dir "$out"
echo "::endgroup::"

[[ -s $out/identity && -s $out/tlscert ]] || die "keybound wrote no identity into $out"
if [[ -n ${GITHUB_ENV:-} ]]; then
  {
    echo "TELEPORT_IDENTITY_FILE=$out/identity"
    echo "MACHINE_ID_DIR=$out"
  } >> "$GITHUB_ENV"
fi
echo "certificates in $out (identity file $out/identity)"
