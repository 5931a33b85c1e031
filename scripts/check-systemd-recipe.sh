#!/usr/bin/env bash
# Runs the systemd recipe of docs/recipes/README.md as written, in a throwaway root, so that the
# recipe and its check cannot drift apart: the steps run are the recipe's own `sh` block, read
# from the page each time. tests/integration/recipes.rs drives it against a dev cluster.
#
#   check-systemd-recipe.sh steps ROOT USER KEYBOUND PROXY
#       Runs the `sh` block of the page's "## systemd" section as root, from the source tree,
#       with every path it writes moved under ROOT, the service user `keybound` named USER,
#       target/release/keybound replaced by KEYBOUND and teleport.example.com:443 by PROXY.
#       `systemctl` lines are skipped (systemd is not PID 1 here), each becoming a comment. A line naming a system path
#       this script does not move fails the check before anything runs.
#   check-systemd-recipe.sh unit ROOT USER [ARG...]
#       Checks what docs/recipes/keybound.service expects to find (its StateDirectory= and
#       ReadWritePaths= owned by its User=), then runs its ExecStart= as systemd would: as USER,
#       from /, with its UMask=, in an environment of its Environment= lines alone (paths moved
#       under ROOT), and ARG... appended (--oneshot: join once and exit).
#
# SSL_CERT_FILE, when set, is kept: it stands for the machine's trust store. Needs root (useradd,
# runuser). The user the steps create stays: the caller removes it (userdel USER).
set -euo pipefail

die() { echo "check-systemd-recipe: $*" >&2; exit 1; }

repo=$(cd "$(dirname "$0")/.." && pwd)
page=$repo/docs/recipes/README.md
unit=$repo/docs/recipes/keybound.service

(( $# >= 3 )) || die "usage: $0 steps ROOT USER KEYBOUND PROXY | unit ROOT USER [ARG...]"
mode=$1 root=$2 user=$3
shift 3
[[ $root == /* && -d $root && $root != *[[:space:]#\&\\]* ]] \
  || die "ROOT must be an existing absolute directory without spaces, #, & or \\: $root"
[[ $user =~ ^[a-z][a-z0-9_-]{0,30}$ && $user != keybound ]] \
  || die "USER must be a throwaway user name (not keybound): $user"
[[ $(id -u) == 0 ]] || die "run as root: the recipe adds a user and runs commands as it"

# The paths the recipe and the unit write, each moved under ROOT.
moved='/etc/keybound\|/etc/systemd/system\|/var/lib/keybound\|/opt/machine-id\|/usr/local/bin'
move() {
  sed -e "s#\(^\|[^[:alnum:]_.-]\)\($moved\)#\1$root\2#g"
}
trust=()
[[ -n ${SSL_CERT_FILE:-} ]] && trust=("SSL_CERT_FILE=$SSL_CERT_FILE")

case $mode in
steps)
  (( $# == 2 )) || die "usage: $0 steps ROOT USER KEYBOUND PROXY"
  bin=$1 proxy=$2
  block=$(awk '/^## systemd$/ { s = 1; next }
               s && /^## / { exit }
               s && /^```sh$/ { b = 1; next }
               b && /^```$/ { exit }
               b { print }' "$page")
  [[ -n $block ]] || die "no sh block in the systemd section of $page"
  script=$(printf '%s\n' "$block" | move | sed \
    -e "s#target/release/keybound#$bin#g" \
    -e "s#teleport\.example\.com:443#$proxy#g" \
    -e "s#\(useradd .*\) keybound\$#\1 $user#" \
    -e "s#-o keybound -g keybound#-o $user -g $user#g" \
    -e "s#chown keybound:keybound#chown $user:$user#g" \
    -e "s#runuser -u keybound #runuser -u $user #g" \
    -e "s|^systemctl .*|echo 'skipped, systemd is not PID 1 here:' # &|")
  # Nothing may reach the real system: no system path left unmoved, no user left unrenamed.
  unmoved=$(printf '%s\n' "$script" | grep -v "^echo 'skipped" | sed "s#$root/[^[:space:]'\"]*##g" \
    | grep -nE '(^|[^[:alnum:]_.-])/(etc|var|opt|srv|home|root|run|usr/local)(/|[[:space:]]|$)' || true)
  [[ -z $unmoved ]] || die "recipe lines name system paths this check does not move under ROOT:
$unmoved"
  unrenamed=$(printf '%s\n' "$script" \
    | grep -nE '(-u|-o|-g|--owner|--group|--user) keybound([[:space:]]|$)|keybound:keybound|useradd .* keybound$' || true)
  [[ -z $unrenamed ]] || die "recipe lines name the user keybound in a way this check does not rename:
$unrenamed"
  others=$(printf '%s\n' "$script" | grep -v "^echo 'skipped" | grep -nE '(^|[^[:alnum:]_-])(systemctl|sudo)([[:space:]]|$)' || true)
  [[ -z $others ]] || die "recipe lines use sudo, or systemctl other than at the start of a line (the steps run as root, and only line-leading systemctl is skipped):
$others"
  cd "$repo"
  env -i PATH="$root/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    HOME=/root LANG=C.UTF-8 "${trust[@]}" bash -euo pipefail -c "$script"
  ;;
unit)
  value() { sed -n "s/^$1=//p" "$unit"; }
  [[ $(value User) == keybound ]] || die "the unit's User= is not keybound"
  [[ -z $(value LoadCredential) ]] || die "the unit's LoadCredential= is not emulated here"
  owned_by_user() {
    [[ -d $1 && $(stat -c %U "$1") == "$user" ]] || die "$1 (the unit's $2) is not a directory of $user"
  }
  for name in $(value StateDirectory); do
    owned_by_user "$root/var/lib/$name" StateDirectory=
    [[ $(stat -c %a "$root/var/lib/$name") == "$(value StateDirectoryMode | sed 's/^0//')" ]] \
      || die "$root/var/lib/$name does not have the unit's StateDirectoryMode="
  done
  for path in $(value ReadWritePaths | move); do
    owned_by_user "$path" ReadWritePaths=
  done
  mapfile -t environment < <(value Environment | move)
  read -r -a command <<<"$(value ExecStart | move)"
  home=$(getent passwd "$user" | cut -d: -f6)
  cd /
  umask "$(value UMask)"
  exec runuser -u "$user" -- env -i \
    PATH="$root/usr/local/sbin:$root/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    HOME="$home" USER="$user" LOGNAME="$user" SHELL=/usr/sbin/nologin \
    "${environment[@]}" "${trust[@]}" "${command[@]}" "$@"
  ;;
*)
  die "unknown mode $mode: steps or unit"
  ;;
esac
