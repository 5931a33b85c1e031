#!/usr/bin/env bash
# The quickstart: a local dev cluster, a new static key, its bot and token created in the running
# cluster (`keybound dev-cluster create`, as `tctl create`), `keybound start --oneshot` (a join,
# then an authenticated rejoin), the role-impersonated certificates it obtained, a key in SoftHSM,
# a lock, the access outputs (an app with curl, a Kubernetes cluster with kubectl), a host
# certificate with SPIFFE SVIDs, the SPIFFE Workload API asked by the spiffe Python client, a key
# made in a TPM (swtpm) with the evidence the admin checks before binding it, per-output
# lifetimes, tbot's config-less `start identity`/`configure` and the heartbeats the cluster
# recorded, SSH to a real sshd node through `keybound ssh-proxy-command`, and standard mode with
# keys made and rotated inside SoftHSM, then at TPM persistent handles. The cluster never restarts. Everything lives in a scratch
# directory that is removed at the end (set KEEP=1 to keep it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --locked --features tpm
kb=$PWD/target/debug/keybound
dir=$(mktemp -d)
cluster_pid=
sshd_pid=
cleanup() {
  [[ -n $sshd_pid ]] && kill "$sshd_pid" 2>/dev/null && wait "$sshd_pid" 2>/dev/null
  [[ -f $dir/swtpm/pid ]] && kill "$(cat "$dir/swtpm/pid")" 2>/dev/null
  [[ -f $dir/swtpm-handles/pid ]] && kill "$(cat "$dir/swtpm-handles/pid")" 2>/dev/null
  [[ -n $cluster_pid ]] && kill "$cluster_pid" 2>/dev/null && wait "$cluster_pid" 2>/dev/null
  if [[ ${KEEP:-} == 1 ]]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# The running dev cluster's admin side (tctl's create, get, ls, rm, lock), through its socket.
admin() { printf '$ keybound dev-cluster' >&2; printf ' %q' "$@" >&2; echo >&2; "$kb" dev-cluster "$@" --admin-socket "$dir/admin.sock"; }

# Standard mode with every key made inside SoftHSM (issue 23): a registration secret the cluster
# shows once, a key generated in the token at registration, then another at the rotation the
# admin requests; OpenSC's pkcs11-tool lists what the token holds.
demo_standard_hsm() {
  step "14. Standard mode, keys made inside SoftHSM: the token gets a registration secret (shown once)"
  cat > "$dir/rotating.yaml" <<YAML
kind: bot
version: v1
metadata:
  name: rotating
spec:
  roles: [access]
---
kind: token
version: v2
metadata:
  name: rotating-token
spec:
  bot_name: rotating
  join_method: bound_keypair
  roles: [Bot]
  bound_keypair:
    recovery:
      limit: 3
      mode: standard
YAML
  local created secret
  created=$(admin create -f "$dir/rotating.yaml")
  echo "$created"
  secret=$(sed -n 's/^Registration secret (shown only now; `get` does not show it): //p' <<<"$created")
  (umask 077; printf '%s\n' "$secret" > "$dir/rotating-secret")
  mkdir -m 0700 "$dir/rotating-storage"
  local dev=(--signer pkcs11 --pkcs11-module /usr/lib/softhsm/libsofthsm2.so
             --pkcs11-uri 'pkcs11:token=demo-token' --pin-source env:HSM_PIN)
  local run=("$kb" start --oneshot --proxy-server "$proxy" --ca-path "$dir/cluster-ca.pem"
             --join-method bound_keypair --token rotating-token --data-dir "$dir/rotating-storage"
             --destination-dir "$dir/out-rotating" "${dev[@]}")
  local tool=(pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label demo-token
              --login --pin "$HSM_PIN" --list-objects --type privkey)

  step "14a. Registration: the cluster asks for a key; keybound makes it inside the token"
  "${run[@]}" --registration-secret-path "$dir/rotating-secret"
  echo "storage keeps references only: $(ls "$dir/rotating-storage" | grep bkp | tr '\n' ' ')"
  cat "$dir/rotating-storage/bkp_device_keys.json"; echo
  "${tool[@]}"
  admin get tokens/rotating-token

  step "14b. The admin asks for a rotation (tctl bound-keypair request-rotation); the next join makes the new key in the token"
  admin request-rotation rotating-token
  "${run[@]}"
  "${tool[@]}"
  admin get tokens/rotating-token | grep -E 'bound_public_key|last_rotated_at'
  echo "the new bound key: $(cat "$dir/rotating-storage/id_bkp.pub")"
}

# Standard mode with keys at TPM persistent handles (issue 23): a fresh swtpm, a registration
# secret, the key made in the TPM at 0x81000100; the rotation's key at 0x81000101 and the old one
# evicted after the result. tpm2-tools lists the handles.
demo_standard_tpm_handles() {
  step "15. Standard mode, keys at TPM persistent handles: tpm_key_handle 0x81000100 and a registration secret"
  mkdir -p "$dir/swtpm-handles"
  local port=$((20000 + 2 * (RANDOM % 6000)))
  swtpm socket --tpm2 --flags not-need-init,startup-clear --tpmstate dir="$dir/swtpm-handles" \
    --server type=tcp,port=$port,bindaddr=127.0.0.1 --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
    --pid file="$dir/swtpm-handles/pid" --daemon
  sed 's/rotating/handles/g; s/mode: standard/mode: relaxed/' "$dir/rotating.yaml" > "$dir/handles.yaml"
  local created secret
  created=$(admin create -f "$dir/handles.yaml")
  secret=$(sed -n 's/^Registration secret (shown only now; `get` does not show it): //p' <<<"$created")
  (umask 077; printf '%s\n' "$secret" > "$dir/handles-secret")
  mkdir -m 0700 "$dir/handles-storage"
  local tcti="swtpm:host=127.0.0.1,port=$port"
  local settings=(--proxy-server "$proxy" --ca-path "$dir/cluster-ca.pem" --join-method bound_keypair
                  --token handles-token --data-dir "$dir/handles-storage" --signer tpm --tpm-tcti "$tcti"
                  --tpm-key-handle 0x81000100 --registration-secret-path "$dir/handles-secret")
  local run=("$kb" start --oneshot --destination-dir "$dir/out-handles" "${settings[@]}")
  handles() { echo "persistent handles: $(TPM2TOOLS_TCTI=$tcti tpm2_getcap handles-persistent | tr '\n' ' ')"; }

  step "15a. Registration: the key is made in the TPM and made persistent at 0x81000100"
  "${run[@]}"
  handles
  cat "$dir/handles-storage/bkp_device_keys.json"; echo
  "$kb" doctor "${settings[@]}" | grep -E '^[a-zA-Z]+ +(keys|handles) '

  step "15b. The admin asks for a rotation: the new key goes to 0x81000101, the old one is evicted after the result"
  admin request-rotation handles-token
  "${run[@]}"
  handles
  admin get tokens/handles-token | grep -E 'bound_public_key|last_rotated_at'
  swtpm_ioctl --tcp "127.0.0.1:$((port + 1))" -s
}

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

# The access outputs: an app and a Kubernetes cluster in the running cluster, a role granting
# them, and one keybound run writing an application and a kubernetes output for the bot, used
# with curl and kubectl.
access_outputs() {
  step "8. Access outputs: an app and a Kubernetes cluster (tctl create), a role granting both"
  cat > "$dir/access.yaml" <<YAML
kind: app
version: v3
metadata:
  name: echo
  labels: {env: demo}
spec:
  uri: http://localhost:8080
  public_addr: echo.localhost
---
kind: kube_cluster
version: v3
metadata:
  name: demo-kube
  labels: {env: demo}
spec: {}
---
kind: role
version: v7
metadata:
  name: web
spec:
  allow:
    app_labels: {env: demo}
    kubernetes_labels: {env: demo}
    kubernetes_groups: [viewers]
---
kind: bot
version: v1
metadata:
  name: demo
spec:
  roles: [access, web]
YAML
  cat "$dir/access.yaml"
  admin create -f "$dir/access.yaml"
  admin ls apps
  admin ls kube_clusters

  step "8a. keybound start --oneshot with an application and a kubernetes output (an authenticated rejoin)"
  sed '/^services:/,$d' "$dir/tbot.yaml" > "$dir/tbot-access.yaml"
  cat >> "$dir/tbot-access.yaml" <<YAML
services:
  - type: application
    app_name: echo
    specific_tls_naming: true
    destination:
      type: directory
      path: $dir/out-app
  - type: kubernetes
    kubernetes_cluster: demo-kube
    destination:
      type: directory
      path: $dir/out-kube
YAML
  sed -n '/^services:/,$p' "$dir/tbot-access.yaml"
  "$kb" start -c "$dir/tbot-access.yaml" --oneshot

  step "8b. curl reaches the app with the application output's certificate (the dev cluster's echo app)"
  port=${proxy##*:}
  curl -sS --resolve "echo.localhost:$port:127.0.0.1" --cacert "$dir/out-app/tls.cas" \
    --cert "$dir/out-app/tls.crt" --key "$dir/out-app/tls.key" "https://echo.localhost:$port/"
  echo
  openssl x509 -in "$dir/out-app/tlscert" -noout -subject -nameopt oneline

  step "8c. kubectl uses the kubernetes output's kubeconfig (its exec plugin runs keybound kube credentials)"
  sed -n '/^users:/,$p' "$dir/out-kube/kubeconfig.yaml"
  kubectl --kubeconfig "$dir/out-kube/kubeconfig.yaml" --cache-dir "$dir/kube-cache" version
  kubectl --kubeconfig "$dir/out-kube/kubeconfig.yaml" --cache-dir "$dir/kube-cache" get namespaces
  kubectl --kubeconfig "$dir/out-kube/kubeconfig.yaml" --cache-dir "$dir/kube-cache" get pods
}
access_outputs
# A host certificate for an OpenSSH server and SPIFFE SVIDs for a workload, from the same bot
# (issue 17): the role gains a host_cert rule and workload identity rights, a workload_identity
# resource names the SPIFFE ID, and one run writes ssh_host, workload-identity-x509 and
# workload-identity-jwt outputs.
host_cert_and_svids() {
  step "9. A host certificate and SVIDs: the role may create host certificates and issue from workload identities"
  cat > "$dir/workload.yaml" <<YAML
kind: role
version: v7
metadata:
  name: access
spec:
  allow:
    logins: [root, ci]
    rules:
      - resources: [host_cert]
        verbs: [create]
        where: all_end_with(host_cert.principals, ".demo.internal")
      - resources: [workload_identity]
        verbs: [read, list]
    workload_identity_labels:
      env: [demo]
---
kind: workload_identity
version: v1
metadata:
  name: web
  labels:
    env: demo
spec:
  spiffe:
    id: /svc/web/{{ user.bot_name }}
YAML
  cat "$dir/workload.yaml"
  admin create -f "$dir/workload.yaml"
  admin ls workload_identities
  sed '/^services:/,$d' "$dir/tbot.yaml" > "$dir/tbot-workload.yaml"
  cat >> "$dir/tbot-workload.yaml" <<YAML
services:
  - type: ssh_host
    destination: {type: directory, path: $dir/host}
    principals: [node1.demo.internal]
  - type: workload-identity-x509
    destination: {type: directory, path: $dir/svid}
    selector: {name: web}
  - type: workload-identity-jwt
    destination: {type: directory, path: $dir/jwt}
    selector: {labels: {env: [demo]}}
    audiences: [https://api.demo.internal]
YAML
  sed -n '/^services:/,$p' "$dir/tbot-workload.yaml"
  "$kb" start -c "$dir/tbot-workload.yaml" --oneshot
  step "9a. The host certificate (ssh-keygen): principal node1.demo.internal, for sshd's HostCertificate"
  ls -l "$dir/host"
  ssh-keygen -L -f "$dir/host/ssh_host-cert.pub" | sed -n '1,12p'
  cat "$dir/host/ssh_host-user-ca.pub"
  step "9b. The X.509 SVID, verified by openssl against the trust bundle, and its SPIFFE ID"
  openssl verify -CAfile "$dir/svid/svid_bundle.pem" "$dir/svid/svid.pem"
  openssl x509 -in "$dir/svid/svid.pem" -noout -ext subjectAltName -dates
  step "9c. The JWT SVID's claims (its signature is the SPIFFE CA's RS256 key)"
  python3 -c 'import base64, json, sys; p = open(sys.argv[1]).read().split(".")[1]; print(json.dumps(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))), indent=2))' "$dir/jwt/jwt_svid"
  step "9d. A principal the rule does not allow is refused (the other outputs still update)"
  sed -i 's/node1.demo.internal/evil.example.com/' "$dir/tbot-workload.yaml"
  if "$kb" start -c "$dir/tbot-workload.yaml" --oneshot; then echo "the host certificate was issued" >&2; exit 1; fi
}
host_cert_and_svids
# 9e. The SPIFFE Workload API: the agent serves SVIDs on a unix socket, each caller its own (its
# uid in the SPIFFE ID); the spiffe Python client (PyPI) fetches them. SIGTERM removes the socket.
workload_api_demo() {
  step "9e. The SPIFFE Workload API on a unix socket, asked by the spiffe Python client"
  cat > "$dir/uid-identity.yaml" <<'YAML'
kind: workload_identity
version: v1
metadata:
  name: by-uid
  labels:
    env: demo
spec:
  spiffe:
    id: /uid/{{ workload.unix.uid }}
YAML
  admin create -f "$dir/uid-identity.yaml"
  sed '/^services:/,$d' "$dir/tbot.yaml" > "$dir/tbot-api.yaml"
  cat >> "$dir/tbot-api.yaml" <<YAML
services:
  - type: workload-identity-api
    listen: unix://$dir/workload.sock
    selector: {name: by-uid}
YAML
  sed -n '/^services:/,$p' "$dir/tbot-api.yaml"
  "$kb" start -c "$dir/tbot-api.yaml" > "$dir/agent-api.log" 2>&1 &
  local agent=$!
  for _ in $(seq 100); do [ -S "$dir/workload.sock" ] && break; sleep 0.1; done
  ls -l "$dir/workload.sock"
  python3 -m venv "$dir/spiffe-venv"
  "$dir/spiffe-venv/bin/pip" install --quiet spiffe==0.3.2
  "$dir/spiffe-venv/bin/python" - "$dir/workload.sock" <<'PY'
import sys
from spiffe import WorkloadApiClient
with WorkloadApiClient(socket_path="unix://" + sys.argv[1]) as c:
    svid = c.fetch_x509_svid()
    print("X.509 SVID:", svid.spiffe_id, "until", svid.leaf.not_valid_after_utc)
    jwt = c.fetch_jwt_svid(audience={"https://api.demo.internal"})
    print("JWT SVID:  ", jwt.spiffe_id, "validated by the agent as",
          c.validate_jwt_svid(jwt.token, "https://api.demo.internal").spiffe_id)
PY
  kill -TERM "$agent"
  wait "$agent" || true
  if [ -e "$dir/workload.sock" ]; then echo "the socket outlived the agent" >&2; exit 1; fi
  echo "SIGTERM: the agent stopped and removed its socket"
}
workload_api_demo
# 8. Key attestation (docs/attestation.md): a virtual TPM manufactured with EK certificates by its
# own local CA, a key made in it with evidence, checked with no TPM, and the one challenge.
attestation_demo() {
  step "10. A key made in a TPM (swtpm with EK certificates), and the evidence the admin checks before binding it"
  mkdir -p "$dir/swtpm/state" "$dir/swtpm/ca"
  printf 'statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\ncertserial = %s/certserial\n' \
    "$dir/swtpm/ca" "$dir/swtpm/ca" "$dir/swtpm/ca" "$dir/swtpm/ca" > "$dir/swtpm/localca.conf"
  printf 'create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n' \
    "$dir/swtpm/localca.conf" > "$dir/swtpm/setup.conf"
  swtpm_setup --tpm2 --create-ek-cert --tpmstate "$dir/swtpm/state" --config "$dir/swtpm/setup.conf" > /dev/null
  local port=$((20000 + 2 * (RANDOM % 6000)))
  swtpm socket --tpm2 --flags not-need-init,startup-clear --tpmstate dir="$dir/swtpm/state" \
    --server type=tcp,port=$port,bindaddr=127.0.0.1 --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
    --pid file="$dir/swtpm/pid" --daemon
  local tpm=(--signer tpm --tpm-tcti "swtpm:host=127.0.0.1,port=$port" --tpm-key-handle 0x81000100)
  "$kb" keypair create --static --format json "${tpm[@]}" --bot-name demo-tpm --token-name tpm-token \
    --ek-intermediates "$dir/swtpm/ca/issuercert.pem" --attest-out "$dir/evidence.json"
  local tpm_public
  tpm_public=$("$kb" keypair show "${tpm[@]}" | sed -n 's/^public key: *//p')
  sed "s|name: demo-token|name: tpm-token|; s|initial_public_key: .*|initial_public_key: $tpm_public|; s|bot_name: demo|bot_name: demo-tpm|" \
    "$dir/token.yaml" > "$dir/tpm-token.yaml"
  # The admin's side, no TPM: the evidence, the challenge, the host's answer.
  "$kb" attest verify "$dir/evidence.json" --ek-ca "$dir/swtpm/ca/swtpm-localca-rootca-cert.pem" --token "$dir/tpm-token.yaml"
  "$kb" attest challenge "$dir/evidence.json" --out "$dir/challenge.json" --secret-out "$dir/secret.json"
  "$kb" keypair attest "${tpm[@]}" --respond "$dir/challenge.json" --out "$dir/response.json"
  "$kb" attest verify "$dir/evidence.json" --ek-ca "$dir/swtpm/ca/swtpm-localca-rootca-cert.pem" --token "$dir/tpm-token.yaml" \
    --response "$dir/response.json" --secret "$dir/secret.json"
  # Checked: only now are the bot and token created, and the bot joins with its key in the TPM.
  printf 'kind: bot\nversion: v1\nmetadata:\n  name: demo-tpm\nspec:\n  roles: [access]\n' > "$dir/tpm-bot.yaml"
  admin create -f "$dir/tpm-bot.yaml"
  admin create -f "$dir/tpm-token.yaml"
  "$kb" start --oneshot --proxy-server "$proxy" --ca-path "$dir/cluster-ca.pem" --join-method bound_keypair \
    --token tpm-token --storage memory:// --destination-dir "$dir/out-tpm" "${tpm[@]}" --require-hardware-key
  swtpm_ioctl --tcp "127.0.0.1:$((port + 1))" -s
}
attestation_demo
# Each output's own credential_ttl and renewal_interval (issue 16, item 6): the application
# output asks for 10 minutes, the identity output keeps the bot's hour; openssl shows both ends.
per_output_lifetimes() {
  step "11. Per-output lifetimes: an application output with its own credential_ttl and renewal_interval"
  sed '/^services:/,$d' "$dir/tbot.yaml" > "$dir/tbot-lifetimes.yaml"
  cat >> "$dir/tbot-lifetimes.yaml" <<YAML
services:
  - type: application
    app_name: echo
    credential_ttl: 10m
    renewal_interval: 5m
    destination:
      type: directory
      path: $dir/out-app-10m
  - type: identity
    destination:
      type: directory
      path: $dir/out-identity-1h
YAML
  sed -n '/^services:/,$p' "$dir/tbot-lifetimes.yaml"
  "$kb" start -c "$dir/tbot-lifetimes.yaml" --oneshot
  date -u
  openssl x509 -in "$dir/out-app-10m/tlscert" -noout -enddate
  openssl x509 -in "$dir/out-identity-1h/tlscert" -noout -enddate
}
per_output_lifetimes

cli_and_heartbeats() {
  step "12. tbot's command line without a config file: start identity by flags, and configure printing the same as YAML"
  "$kb" keypair create --static --algorithm ed25519 --static-key-path "$dir/cli-key.pem" --format json > /dev/null
  local cli_public
  cli_public=$("$kb" keypair show --static-key-path "$dir/cli-key.pem" | sed -n 's/^public key: *//p')
  sed "s|name: demo-token|name: cli-token|; s|initial_public_key: .*|initial_public_key: $cli_public|; s|limit: 1|limit: 2|" \
    "$dir/token.yaml" > "$dir/cli-token.yaml"
  admin create -f "$dir/cli-token.yaml"
  local flags=(--proxy-server "$proxy" --ca-path "$dir/cluster-ca.pem" --join-method bound_keypair --token cli-token
    --static-key-path "$dir/cli-key.pem" --storage memory:// --destination "file://$dir/out-cli")
  "$kb" start identity --oneshot "${flags[@]}"
  "$kb" configure identity --oneshot "${flags[@]}" -o "$dir/cli.yaml"
  cat "$dir/cli.yaml"
  "$kb" start -c "$dir/cli.yaml"

  step "12b. Each run reported its bot instance to the cluster (tctl bots instances)"
  admin heartbeats
}
cli_and_heartbeats
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
  step "13. A node: OpenSSH's sshd on 127.0.0.1:$port, its host key signed by the cluster's host CA"
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
  # The role is replaced by one that grants SSH only (the sections above are done with it).
  step "13a. Registered as nodes (kind: node), and the role grants $me on nodes labelled env: dev"
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
  step "13b. The output again (the certificate now carries the login $me); its ssh_config runs keybound"
  "$kb" start -c "$dir/tbot.yaml" --oneshot
  grep -n 'ProxyCommand' "$dir/out/ssh_config"
  step "13c. ssh -F out/ssh_config $me@node1.dev.keybound.test hostname (StrictHostKeyChecking yes)"
  ssh -F "$dir/out/ssh_config" -p "$port" -o BatchMode=yes -o StrictHostKeyChecking=yes \
    "$me@node1.dev.keybound.test" 'echo "logged in to $(hostname) as $(id -un) through keybound"'
  step "13d. node2 is labelled env: prod, which the role does not grant: the proxy refuses"
  if ssh -F "$dir/out/ssh_config" -p "$port" -o BatchMode=yes "$me@node2.dev.keybound.test" true; then
    echo "node2 let the bot in" >&2; exit 1
  fi
}
ssh_demo
demo_standard_hsm
demo_standard_tpm_handles
