#!/usr/bin/env bash
# Makes a static bound keypair in a scratch directory and reads it back, as a user would.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --locked
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
./target/debug/keybound keypair create --static --algorithm ed25519 --static-key-path "$dir/bound-key.pem"
echo "--- keybound keypair show --static-key-path $dir/bound-key.pem"
./target/debug/keybound keypair show --static-key-path "$dir/bound-key.pem"
