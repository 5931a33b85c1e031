#!/usr/bin/env bash
# Creates a private SoftHSM token store in DIR and initialises a token LABEL in it, without
# touching /etc or /var/lib/softhsm. Prints the `export SOFTHSM2_CONF=...` line to eval.
#
# Usage: init-token.sh DIR LABEL [USER_PIN] [SO_PIN]
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 DIR LABEL [USER_PIN] [SO_PIN]" >&2
  exit 2
fi
dir=$1 label=$2 pin=${3:-1234} so_pin=${4:-12345678}
here=$(cd "$(dirname "$0")" && pwd)

command -v softhsm2-util >/dev/null || { echo "init-token: softhsm2-util is missing: apt-get install softhsm2" >&2; exit 1; }
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
sed "s|@TOKENDIR@|$dir/tokens|" "$here/softhsm2.conf.in" > "$dir/softhsm2.conf"
export SOFTHSM2_CONF="$dir/softhsm2.conf"
# Idempotent: an existing token with this label is kept.
if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label: *$label\$"; then
  softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin "$so_pin" >/dev/null
fi
printf 'export SOFTHSM2_CONF=%q\n' "$SOFTHSM2_CONF"
