#!/usr/bin/env bash
# The quickstart: a local dev cluster, a new static key, its bot and token created in the running
# cluster (`keybound dev-cluster create`, as `tctl create`), `keybound start --oneshot` (a join,
# then an authenticated rejoin), the role-impersonated certificates it obtained, a key in SoftHSM,
# a lock, and SSH to a real sshd node through `keybound ssh-proxy-command`. The cluster never restarts. Everything lives in a scratch directory that is removed
# at the end (set KEEP=1 to keep it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --locked --features tpm
kb=$PWD/target/debug/keybound
dir=$(mktemp -d)
cluster_pid=
sshd_pid=
cleanup() {
  [[ -n $sshd_pid ]] && kill "$sshd_pid" 2>/dev/null && wait "$sshd_pid" 2>/dev/null
  [[ -n $cluster_pid ]] && kill "$cluster_pid" 2>/dev/null && wait "$cluster_pid" 2>/dev/null
  if [[ ${KEEP:-} == 1 ]]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# The running dev cluster's admin side (tctl's create, get, ls, rm, lock), through its socket.
admin() { printf '$ keybound dev-cluster' >&2; printf ' %q' "$@" >&2; echo >&2; "$kb" dev-cluster "$@" --admin-socket "$dir/admin.sock"; }

step "0. A local dev cluster, empty (its admin socket in $dir, mode 0600)"
"$kb" dev-cluster --listen 127.0.0.1:0 --ca-out "$dir/cluster-ca.pem" --admin-socket "$dir/admin.sock" \
  > "$dir/cluster.log" 2>&1 &
cluster_pid=$!
for _ in $(seq 100); do grep -q '^admin socket:' "$dir/cluster.log" && break; sleep 0.05; done
grep -q '^admin socket:' "$dir/cluster.log" || { cat "$dir/cluster.log"; exit 1; }
proxy=$(sed -n 's/^proxy_server: //p' "$dir/cluster.log")
grep -v INFO "$dir/cluster.log"
admin status

step "1. A static bound keypair (the private key stays in $dir/bound-key.pem, mode 0600)"
"$kb" keypair create --static --algorithm ed25519 --static-key-path "$dir/bound-key.pem" --format json
public_key=$("$kb" keypair show --static-key-path "$dir/bound-key.pem" | sed -n 's/^public key: *//p')

step "2. A join token for it, in Teleport's token YAML (what tctl create takes)"
cat > "$dir/token.yaml" <<YAML
kind: token
version: v2
metadata:
  name: demo-token
spec:
  bot_name: demo
  join_method: bound_keypair
  roles: [Bot]
  bound_keypair:
    onboarding:
      initial_public_key: $public_key
    recovery:
      limit: 1
      mode: insecure
YAML
cat "$dir/token.yaml"

step "2b. The bot and the role it may impersonate (what tctl bots add demo --roles=access makes)"
cat > "$dir/resources.yaml" <<YAML
kind: role
version: v7
metadata:
  name: access
spec:
  allow:
    logins: [root, ci]
---
kind: bot
version: v1
metadata:
  name: demo
spec:
  roles: [access]
---
kind: bot
version: v1
metadata:
  name: demo-hsm
spec:
  roles: [access]
YAML
cat "$dir/resources.yaml"

step "3. Created in the running cluster: the seed guide's tctl create steps"
admin create -f "$dir/resources.yaml"
admin create -f "$dir/token.yaml"
admin ls tokens
admin ls bots

step "4. keybound start --oneshot with a tbot.yaml"
cat > "$dir/tbot.yaml" <<YAML
version: v2
proxy_server: $proxy
onboarding:
  join_method: bound_keypair
  token: demo-token
  ca_path: $dir/cluster-ca.pem
  bound_keypair:
    static_private_key_path: $dir/bound-key.pem
storage:
  type: directory
  path: $dir/bot-storage
services:
  - type: identity
    destination:
      type: directory
      path: $dir/out
YAML
cat "$dir/tbot.yaml"
step "4a. keybound doctor: the same configuration checked, without signing or joining"
"$kb" doctor -c "$dir/tbot.yaml"
echo
"$kb" start -c "$dir/tbot.yaml" --oneshot
step "4b. Again: the stored identity is still valid, so this is an authenticated rejoin (same bot instance)"
"$kb" start -c "$dir/tbot.yaml" --oneshot

step "5. What it wrote: certificates for the role access, impersonated by bot-demo"
ls -l "$dir/out"
step "The X.509 certificate (verified by openssl against the cluster's user CA)"
openssl verify -CAfile "$dir/out/teleport-user-ca.crt" "$dir/out/tlscert"
openssl x509 -in "$dir/out/tlscert" -noout -subject -issuer -dates -nameopt oneline
step "The SSH certificate (read by ssh-keygen): the role's logins, and who impersonated it"
ssh-keygen -L -f "$dir/out/key-cert.pub" | sed -n '1,20p'

step "6. The same join with the bound key made inside a token (SoftHSM), where it cannot be copied"
eval "$(softhsm-fixtures/init-token.sh "$dir/hsm" demo-token 1234 12345678)"   # sets SOFTHSM2_CONF
export HSM_PIN=1234
hsm=(--signer pkcs11 --pkcs11-module /usr/lib/softhsm/libsofthsm2.so
     --pkcs11-uri 'pkcs11:token=demo-token;object=bound-key' --pin-source env:HSM_PIN)
"$kb" keypair create --static --algorithm ecdsa-p256 --format json "${hsm[@]}"
hsm_public=$("$kb" keypair show "${hsm[@]}" | sed -n 's/^public key: *//p')
"$kb" signer list --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --pin-source env:HSM_PIN
sed "s|name: demo-token|name: hsm-token|; s|initial_public_key: .*|initial_public_key: $hsm_public|; s|bot_name: demo|bot_name: demo-hsm|" \
  "$dir/token.yaml" > "$dir/hsm-token.yaml"
admin create -f "$dir/hsm-token.yaml"
"$kb" start --oneshot --proxy-server "$proxy" --ca-path "$dir/cluster-ca.pem" --join-method bound_keypair \
  --token hsm-token --storage memory:// --destination-dir "$dir/out-hsm" "${hsm[@]}" --require-hardware-key
openssl verify -CAfile "$dir/out-hsm/teleport-user-ca.crt" "$dir/out-hsm/tlscert"

step "6b. The first bot's stored identity is still good: no restart, so another authenticated rejoin"
"$kb" start -c "$dir/tbot.yaml" --oneshot
admin get tokens/demo-token

step "7. A lock on the token refuses the bot; removing it lets the bot back (tctl lock, tctl rm)"
lock=$(admin lock --join-token demo-token --message "demo: key under review" | sed -n 's/^Created a lock with name "\(.*\)"\.$/\1/p')
admin ls locks
if "$kb" start -c "$dir/tbot.yaml" --oneshot; then echo "the locked bot joined" >&2; exit 1; fi
admin rm "locks/$lock"
"$kb" start -c "$dir/tbot.yaml" --oneshot

# SSH to a node with nothing but keybound: a real OpenSSH sshd (host certificate from the cluster's
# host CA, the user CA trusted) registered as a node, reached through the output's ssh_config,
# whose ProxyCommand is `keybound ssh-proxy-command`.
ssh_demo() {
  local me port sshd_bin
  me=$(id -un)
  local logins="root, ci"
  [[ $me == root || $me == ci ]] || logins="$logins, $me"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  sshd_bin=$(command -v sshd || echo /usr/sbin/sshd)
  step "8. A node: OpenSSH's sshd on 127.0.0.1:$port, its host key signed by the cluster's host CA"
  mkdir -p "$dir/node" && ssh-keygen -q -t ed25519 -N '' -f "$dir/node/host_key"
  admin sign-host --public-key "$dir/node/host_key.pub" --principal node1 --principal node1.dev.keybound.test \
    > "$dir/node/host_key-cert.pub"
  ssh-keygen -L -f "$dir/node/host_key-cert.pub" | sed -n '1,12p'
  # The user CA, for TrustedUserCAKeys (tctl auth export --type=user, without its cert-authority prefix).
  curl -fsS --cacert "$dir/cluster-ca.pem" "https://$proxy/webapi/auth/export?type=user" \
    | sed 's/^cert-authority //' > "$dir/node/user_ca.pub"
  cat > "$dir/node/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $port
HostKey $dir/node/host_key
HostCertificate $dir/node/host_key-cert.pub
TrustedUserCAKeys $dir/node/user_ca.pub
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PidFile $dir/node/sshd.pid
Subsystem sftp internal-sftp
CONF
  mkdir -p /run/sshd 2>/dev/null || true
  "$sshd_bin" -D -e -f "$dir/node/sshd_config" 2> "$dir/node/sshd.log" &
  sshd_pid=$!
  step "8a. Registered as nodes (kind: node), and the role grants $me on nodes labelled env: dev"
  cat > "$dir/nodes.yaml" <<YAML
kind: node
version: v2
sub_kind: openssh
metadata:
  name: 5b4b1a4e-96c3-4b44-9a57-0d0b1e6ff6a1
  labels: {env: dev}
spec:
  hostname: node1
  addr: 127.0.0.1:$port
---
kind: node
version: v2
sub_kind: openssh
metadata:
  name: 8d7f3c52-1d35-4c6b-a0cc-6f1d3a3a5d10
  labels: {env: prod}
spec:
  hostname: node2
  addr: 127.0.0.1:$port
---
kind: role
version: v7
metadata:
  name: access
spec:
  allow:
    logins: [$logins]
    node_labels: {env: dev}
YAML
  cat "$dir/nodes.yaml"
  admin create -f "$dir/nodes.yaml"
  admin ls nodes
  step "8b. The output again (the certificate now carries the login $me); its ssh_config runs keybound"
  "$kb" start -c "$dir/tbot.yaml" --oneshot
  grep -n 'ProxyCommand' "$dir/out/ssh_config"
  step "8c. ssh -F out/ssh_config $me@node1.dev.keybound.test hostname (StrictHostKeyChecking yes)"
  ssh -F "$dir/out/ssh_config" -p "$port" -o BatchMode=yes -o StrictHostKeyChecking=yes \
    "$me@node1.dev.keybound.test" 'echo "logged in to $(hostname) as $(id -un) through keybound"'
  step "8d. node2 is labelled env: prod, which the role does not grant: the proxy refuses"
  if ssh -F "$dir/out/ssh_config" -p "$port" -o BatchMode=yes "$me@node2.dev.keybound.test" true; then
    echo "node2 let the bot in" >&2; exit 1
  fi
}
ssh_demo
