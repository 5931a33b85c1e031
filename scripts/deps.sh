#!/usr/bin/env bash
# Installs what keybound's build and tests need on Debian 12, skipping what is present.
# Idempotent; needs root or sudo only when something is missing.
set -euo pipefail

packages=(
  # Build
  pkg-config libtss2-dev protobuf-compiler
  # Emulators and the tools the tests check keybound against
  softhsm2 opensc swtpm swtpm-tools tpm2-tools tpm2-openssl
  openssl openssh-client openssh-server ca-certificates
  # python3-venv: the spiffe client (PyPI) is installed into a venv by the tests and the demo
  python3 python3-venv python3-jwt python3-cryptography
  # libseccomp's Python binding: a test hides openat2 from keybound (symlinks: try-secure)
  python3-seccomp
  # The TLS-terminating L7 load balancer of the connection-upgrade tests
  nginx
  # The shells and formatter that check `keybound completions` and `keybound man`; libfaketime
  # for `keybound doctor`'s clock-skew test
  bash zsh fish groff-base man-db faketime
  # systemd-analyze checks the systemd unit recipe (verify, and security --offline); useradd and
  # runuser run its steps (scripts/check-systemd-recipe.sh); script gives the log test a terminal;
  # setpriv and curl knock on the dev cluster's admin socket as another user
  systemd passwd util-linux bsdutils curl
  # scripts/perf.py: peak RSS of a whole process
  time
  # the agent's health endpoints read as a probe would (tests/integration/agent_health.rs)
  curl
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# kubectl, for the Kubernetes outputs' tests (Debian's kubernetes-client); any kubectl on PATH
# will do.
if ! command -v kubectl >/dev/null; then
  missing+=(kubernetes-client)
fi

if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "deps: run as root or install sudo" >&2; exit 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for c in cargo rustc; do
  command -v "$c" >/dev/null || { echo "deps: $c not found; install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
done
for c in rustfmt clippy-driver; do
  command -v "$c" >/dev/null || { echo "deps: $c not found: rustup component add rustfmt clippy" >&2; exit 1; }
done
