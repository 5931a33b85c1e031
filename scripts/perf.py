#!/usr/bin/env python3
"""keybound's performance suite: runs every benchmark and writes the tables of docs/PERFORMANCE.md.

    scripts/perf.py            # everything (about 10 minutes on 2 cores)
    scripts/perf.py --quick    # fewer runs, to check the script itself

What it measures, on loopback against keybound's dev cluster:
  * one signature through each backend's own library (the floor) and through keybound's Signer;
  * one full join in process, per backend, next to its floor (three gRPC round trips + one raw
    signature), and the gRPC round trip itself;
  * `keybound start --oneshot` as a whole process, exec to exit, wall time and peak RSS
    (from GNU time), per backend;
  * the stripped release binary's size;
  * 500 bots joining at once against the dev cluster as its own process;
  * one renewal, and a soak run of renewals (memory and file descriptors must stay flat).

It never asserts a time: the figures go to docs/PERFORMANCE.md, between the generated-section
markers, next to the targets. The prose around them is kept.
"""

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "PERFORMANCE.md"
BEGIN = "<!-- perf.py: generated, do not edit by hand -->"
END = "<!-- perf.py: end -->"
FEATURES = ["--features", "tpm"]
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
GNU_TIME = "/usr/bin/time"


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, **kw)


def out(cmd, **kw):
    return run(cmd, capture_output=True, **kw).stdout.strip()


def percentile(sorted_values, p):
    return sorted_values[round((len(sorted_values) - 1) * p)]


# === Whole-process runs ===


def timed_process(cmd, env):
    """Runs cmd to completion; its wall time in seconds."""
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed: {done.stderr.decode()}")
    return wall


def peak_rss_kib(cmd, env):
    """cmd's peak RSS in KiB, from GNU time's wait4. Not from this script's own wait4: a child
    forked from Python starts with Python's memory, and ru_maxrss would count it."""
    with tempfile.NamedTemporaryFile("r") as report:
        run([GNU_TIME, "-f", "%M", "-o", report.name, *cmd], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return int(report.read().strip().splitlines()[-1])


def free_even_port():
    """An even port that is free, with the next one free too (swtpm's server and control)."""
    while True:
        port = random.randrange(20000, 32000, 2)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


class Oneshot:
    """A dev cluster (its own process) with one bot per backend, and a key for each."""

    def __init__(self, kb, work):
        self.kb, self.work = kb, work
        self.env = dict(os.environ, RUST_LOG="warn")
        self.children = []
        self.backends = {}  # name -> (args for keybound, public key)

    def setup(self):
        w = self.work
        for alg in ["ed25519", "ecdsa-p256"]:
            path = w / f"{alg}.pem"
            run([self.kb, "keypair", "create", "--static", "--algorithm", alg,
                 "--static-key-path", path, "--format", "json"], env=self.env, capture_output=True)
            shown = out([self.kb, "keypair", "show", "--static-key-path", path], env=self.env)
            self.backends[f"file {alg}"] = (
                ["--static-key-path", str(path)],
                re.search(r"^public key:\s*(.+)$", shown, re.M).group(1))
        # SoftHSM: a token of its own, a key made inside it per algorithm.
        exports = out([ROOT / "softhsm-fixtures" / "init-token.sh", w / "hsm", "perf", "1234",
                       "12345678"])
        self.env["SOFTHSM2_CONF"] = re.search(r"SOFTHSM2_CONF=['\"]?([^'\"\s]+)", exports).group(1)
        self.env["PERF_PIN"] = "1234"
        for alg in ["ed25519", "ecdsa-p256"]:
            args = ["--signer", "pkcs11", "--pkcs11-module", SOFTHSM,
                    "--pkcs11-uri", f"pkcs11:token=perf;object={alg}", "--pin-source", "env:PERF_PIN"]
            run([self.kb, "keypair", "create", "--static", "--algorithm", alg, "--format", "json",
                 *args], env=self.env, capture_output=True)
            shown = out([self.kb, "keypair", "show", *args], env=self.env)
            self.backends[f"softhsm {alg}"] = (
                args, re.search(r"^public key:\s*(.+)$", shown, re.M).group(1))
        # swtpm: a TPM of its own, a persistent P-256 key.
        port = free_even_port()
        (w / "tpm").mkdir()
        self.children.append(subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--flags", "not-need-init,startup-clear",
             "--tpmstate", f"dir={w / 'tpm'}",
             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.025)
        args = ["--signer", "tpm", "--tpm-tcti", f"swtpm:host=127.0.0.1,port={port}",
                "--tpm-key-handle", "0x81000100"]
        run([self.kb, "keypair", "create", "--static", "--algorithm", "ecdsa-p256", "--format",
             "json", *args], env=self.env, capture_output=True)
        shown = out([self.kb, "keypair", "show", *args], env=self.env)
        self.backends["swtpm ecdsa-p256"] = (
            args, re.search(r"^public key:\s*(.+)$", shown, re.M).group(1))

        resources = [
            "kind: role\nversion: v7\nmetadata:\n  name: access\nspec:\n  allow:\n    logins: [ci]\n"]
        for i, (name, (_, key)) in enumerate(self.backends.items()):
            resources.append(
                f"kind: token\nversion: v2\nmetadata:\n  name: perf-{i}\nspec:\n  bot_name: perf-{i}\n"
                f"  join_method: bound_keypair\n  roles: [Bot]\n  bound_keypair:\n    onboarding:\n"
                f"      initial_public_key: {key}\n    recovery:\n      mode: insecure\n")
            resources.append(
                f"kind: bot\nversion: v1\nmetadata:\n  name: perf-{i}\nspec:\n  roles: [access]\n")
        (w / "resources.yaml").write_text("---\n".join(resources))
        cluster = subprocess.Popen(
            [self.kb, "dev-cluster", "--listen", "127.0.0.1:0", "--resources",
             w / "resources.yaml", "--ca-out", w / "ca.pem", "--admin-socket", w / "admin.sock"],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.children.append(cluster)
        for line in cluster.stdout:
            if line.startswith("proxy_server: "):
                self.proxy = line.split(": ", 1)[1].strip()
                break
        else:
            raise SystemExit("the dev cluster did not start")

    def measure(self, runs, renew=False, only=None):
        """(backend, wall seconds list, peak RSS KiB list) per backend."""
        results = []
        for i, (name, (args, _)) in enumerate(self.backends.items()):
            if only and name not in only:
                continue
            storage = self.work / f"storage-{i}"
            cmd = [self.kb, "start", "--oneshot", "--proxy-server", self.proxy, "--ca-path",
                   self.work / "ca.pem", "--join-method", "bound_keypair", "--token", f"perf-{i}",
                   "--destination-dir", self.work / f"out-{i}", *args]
            cmd += ["--data-dir", storage] if renew else ["--storage", "memory://"]
            if renew:
                timed_process(cmd, self.env)  # the identity every later run renews
            walls = [timed_process(cmd, self.env) for _ in range(3 + runs)][3:]
            rss = [peak_rss_kib(cmd, self.env) for _ in range(5)]
            results.append((name, sorted(walls), rss))
        return results

    def stop(self):
        for child in reversed(self.children):
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


# === The report ===


def machine():
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    osname = "Linux"
    if Path("/etc/os-release").exists():
        osname = re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text()).group(1)
    return (f"{cpu}, {os.cpu_count()} cores, {mem // 1024 // 1024} GiB; {osname}, "
            f"kernel {platform.release()}")


def versions():
    def first_line(cmd):
        try:
            done = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            return done.stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "not found"
    commit = out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = " (with uncommitted changes)" if out(["git", "-C", ROOT, "status", "--porcelain"]) else ""
    return [
        f"keybound {commit}{dirty}, release profile (LTO, one codegen unit, stripped)",
        first_line(["rustc", "--version"]),
        "SoftHSM " + first_line(["softhsm2-util", "--version"]),
        first_line(["swtpm", "--version"]),
    ]


def ms(seconds):
    return f"{seconds * 1e3:.2f} ms"


def us(value):
    return f"{value:.1f} µs" if value < 1000 else f"{value / 1e3:.2f} ms"


def tls_line(results):
    tls = {r["name"]: r for r in results if r["bench"] == "tls"}
    if len(tls) < 2:
        return []
    first = tls["TLS config, system roots, first"]["time_p50_us"]
    bundle = tls["TLS config, same roots as a bundle"]
    return [f"Building a TLS client configuration: the system trust store {us(first)} the first "
            f"time, then kept for the process; the same certificates as a `ca_path` bundle, read "
            f"each time, {us(bundle['time_p50_us'])} p50.", ""]


def render(results, oneshot, renew, exec_floor, size, quick):
    sign = {r["name"]: r for r in results if r["bench"] == "sign"}
    joins = [r for r in results if r["bench"] == "join"]
    rtt = {r["name"]: r for r in results if r["bench"] == "rtt"}
    lines = [BEGIN, ""]
    lines.append(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}.")
    lines.append("")
    for v in versions():
        lines.append(f"- {v}")
    if quick:
        lines += ["", "**Quick run (`--quick`): too few runs to quote.**"]

    lines += ["", "### 1. One signature: keybound's `Signer` against the backend's own call",
              "", "Target: keybound within 5% of the floor (ratio ≤ 1.05).", "",
              "| backend | floor p50 | floor p99 | keybound p50 | keybound p99 | ratio (p50) |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, r in sign.items():
        ratio = r["keybound_p50_us"] / r["floor_p50_us"]
        lines.append(f"| {name} | {us(r['floor_p50_us'])} | {us(r['floor_p99_us'])} | "
                     f"{us(r['keybound_p50_us'])} | {us(r['keybound_p99_us'])} | {ratio:.3f} |")

    trip = rtt["gRPC round trip"]["time_p50_us"]
    connect = rtt["connect + 1st RPC"]["time_p50_us"]
    lines += ["", "### 2. One join, in process, TLS + gRPC on loopback", "",
              f"gRPC round trip (unary `Ping` on an open connection, same TLS stack and ALPN router): "
              f"p50 {us(trip)}, p99 {us(rtt['gRPC round trip']['time_p99_us'])}. Opening a "
              f"connection (TCP, TLS 1.3 with a client certificate, HTTP/2, first RPC): p50 "
              f"{us(connect)}, p99 {us(rtt['connect + 1st RPC']['time_p99_us'])}.", "",
              *tls_line(results),
              "Floor = 3 round trips + one raw signature (the issue's definition). "
              "Target: join ≤ 1.5 × floor. The last column adds the connection a join must open.", "",
              "| bound key | suite | RPC | p50 | p99 | floor | ratio | floor + connect | ratio |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in joins:
        raw = sign.get(r["name"], {}).get("floor_p50_us")
        if raw is None:
            continue
        floor = 3 * trip + raw
        with_connect = floor + connect
        lines.append(
            f"| {r['name']} | {r['suite']} | {r['rpc']} | {us(r['time_p50_us'])} | "
            f"{us(r['time_p99_us'])} | {us(floor)} | {r['time_p50_us'] / floor:.2f} | "
            f"{us(with_connect)} | {r['time_p50_us'] / with_connect:.2f} |")
    for r in joins:
        if r["name"] not in sign:
            lines.append(f"| {r['name']} | {r['suite']} | {r['rpc']} | {us(r['time_p50_us'])} | "
                         f"{us(r['time_p99_us'])} | | | | |")

    lines += ["", "### 3. `keybound start --oneshot`, a whole process (exec to exit)", "",
              "Targets with a file key: under 30 ms wall and under 20 MB peak RSS. Each run: a "
              "join (a recovery, storage `memory://`, as a CI job does) or an authenticated rejoin "
              "(a valid identity in `--data-dir`), then one role-impersonated identity output. "
              "Peak RSS: GNU time's `%M` (wait4's `ru_maxrss`), five runs. Floor: starting and "
              f"ending the process (`keybound --version`, exec to exit: {ms(exec_floor)} p50) "
              "plus the same join in process (section 2).", "",
              "| bound key | run | wall p50 | wall p99 | floor | ratio | peak RSS (max) |",
              "|---|---|---:|---:|---:|---:|---:|"]
    in_process = {r["name"]: r["time_p50_us"] / 1e6 for r in joins
                  if r["suite"] == "balanced-v1" and r["rpc"] == "join"}
    for label, rows in [("join", oneshot), ("authenticated rejoin", renew)]:
        for name, walls, rss in rows:
            floor = exec_floor + in_process.get(name, float("nan"))
            lines.append(f"| {name} | {label} | {ms(statistics.median(walls))} | "
                         f"{ms(percentile(walls, 0.99))} | {ms(floor)} | "
                         f"{statistics.median(walls) / floor:.1f} | {max(rss) / 1024:.1f} MiB |")

    lines += ["", "### 4. Size", "",
              f"Stripped release binary with every backend (file, env, PKCS#11, TPM): "
              f"{size / 1e6:.2f} MB ({size} bytes). Target: under 15 MB."]

    load = [r for r in results if r["bench"] == "load"]
    if load:
        r = load[0]
        lines += ["", "### 5. Scale: bots joining at once", "",
                  f"{r['bots']} bots, each with its own token and file Ed25519 key, joining at the "
                  f"same instant, {r['rounds']} rounds, from one load generator against "
                  f"`keybound dev-cluster` as its own process, both on this machine: "
                  f"{r['joins']} joins, **{r['errors']} errors**, {r['per_second']:.0f} joins/s; one "
                  f"join {us(r['time_p50_us'])} p50, {us(r['time_p99_us'])} p99; dev cluster peak "
                  f"RSS {r['cluster_peak_rss_kib'] / 1024:.1f} MiB."]

    renewal = [r for r in results if r["bench"] == "renewal"]
    soak = [r for r in results if r["bench"] == "soak"]
    if renewal or soak:
        lines += ["", "### 6. Renewal (the long-running agent)", "",
                  "| in process, on loopback | p50 | p99 |", "|---|---:|---:|"]
        for r in renewal:
            lines.append(f"| {r['name']} | {us(r['time_p50_us'])} | {us(r['time_p99_us'])} |")
        for r in soak:
            lines += ["", f"Soak: {r['renewals']} renewals back to back, {r['per_second']:.0f}/s; "
                      f"resident memory {r['rss_early_kib']} KiB after the warm-up, "
                      f"{r['rss_end_kib']} KiB at the end; open file descriptors {r['fds_early']} → "
                      f"{r['fds_end']}."]
    lines += ["", END]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few runs: checks the script")
    parser.add_argument("--runs", type=int, default=50, help="start --oneshot runs per backend")
    opts = parser.parse_args()
    runs = 5 if opts.quick else opts.runs

    if not os.access(GNU_TIME, os.X_OK):
        raise SystemExit(f"{GNU_TIME} is missing: apt-get install time (or make deps)")
    run(["cargo", "build", "--release", "--locked", *FEATURES], cwd=ROOT)
    kb = ROOT / "target" / "release" / "keybound"
    size = kb.stat().st_size
    if shutil.which("file") and "not stripped" in out(["file", "-L", kb]):
        raise SystemExit(f"{kb} is not stripped: check [profile.release] in Cargo.toml")

    with tempfile.TemporaryDirectory(prefix="keybound-perf-") as tmp:
        tmp = Path(tmp)
        json_path = tmp / "bench.jsonl"
        env = dict(os.environ, KEYBOUND_BENCH_JSON=str(json_path))
        benches = [a for b in ["sign", "join", "renewal", "load", "soak"] for a in ("--bench", b)]
        extra = ["--", "--quick"] if opts.quick else []
        run(["cargo", "bench", "--locked", *FEATURES, *benches, *extra], cwd=ROOT, env=env)
        results = [json.loads(line) for line in json_path.read_text().splitlines()]

        work = tmp / "oneshot"
        work.mkdir()
        bench = Oneshot(kb, work)
        try:
            bench.setup()
            exec_floor = statistics.median(
                timed_process([kb, "--version"], bench.env) for _ in range(runs))
            oneshot = bench.measure(runs)
            renew = bench.measure(runs, renew=True, only={"file ed25519"})
        finally:
            bench.stop()

    text = render(results, oneshot, renew, exec_floor, size, opts.quick)
    doc = DOC.read_text() if DOC.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC} has lost its generated-section markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + text + tail)
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
