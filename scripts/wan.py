#!/usr/bin/env python3
"""keybound across a WAN: round trips counted through a latency-injecting TCP proxy on loopback.

    scripts/wan.py                          # builds the release binary, runs, rewrites the table
    scripts/wan.py --quick                  # fewer runs, to check the script itself
    scripts/wan.py --keybound BIN --save F  # measure another binary, keep its figures as JSON
    scripts/wan.py --before F               # the table gains the figures of F as "before"
    scripts/wan.py --only daemon --rtt 50 --no-doc   # one scenario at one RTT, while iterating

A TCP proxy on 127.0.0.1 sits between keybound and its dev cluster and holds every chunk it
reads for a one-way delay before passing it on (no root, no netem). It also holds a new
connection's first bytes until one round trip after the connection opened: on loopback connect()
returns at once, where across a network the TCP handshake costs a round trip before the client
may send. A plain TCP echo through the proxy checks, before anything is measured, that it adds
what it is set to and nothing more.

For 10, 50 and 150 ms of round-trip time (and 0, the same proxy without delay) it runs:
  * a first join (storage `memory://`, a recovery) + 1 identity output, as a CI job does, with
    the output's roles from the bot's role and with the roles named;
  * a `--oneshot` authenticated rejoin (an identity in `--data-dir`) + 1 output, and + 5 outputs;
  * a renewal of the long-running agent (SIGUSR1, then its "renewed" line) + 1 output.
Each as wall time and as a count of round trips: (wall − the same scenario's wall without
delay) / RTT. For each scenario at 50 ms the proxy's record of connections and of the flights of
bytes on each (who sent, how much, when in RTTs) shows where the round trips go.

It never asserts a time: the figures go to docs/PERFORMANCE.md between the wan.py markers.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "PERFORMANCE.md"
BEGIN = "<!-- wan.py: generated, do not edit by hand -->"
END = "<!-- wan.py: end -->"
RTTS_MS = [10, 50, 150]
SHOWN_RTT_MS = 50


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, **kw)


def out(cmd, **kw):
    return run(cmd, capture_output=True, **kw).stdout.strip()


# === The delay proxy ===


def client_hello_alpn(data):
    """The ALPN values of a TLS ClientHello at the start of `data`, or None if it is not one."""
    try:
        if len(data) < 6 or data[0] != 0x16 or data[5] != 0x01:
            return None
        i = 5 + 4 + 2 + 32
        i += 1 + data[i]
        i += 2 + int.from_bytes(data[i:i + 2], "big")
        i += 1 + data[i]
        end = i + 2 + int.from_bytes(data[i:i + 2], "big")
        i += 2
        while i + 4 <= end:
            kind = int.from_bytes(data[i:i + 2], "big")
            size = int.from_bytes(data[i + 2:i + 4], "big")
            body = data[i + 4:i + 4 + size]
            if kind == 16:
                names, j = [], 2
                while j < len(body):
                    names.append(body[j + 1:j + 1 + body[j]].decode("ascii", "replace"))
                    j += 1 + body[j]
                return names
            i += 4 + size
        return []
    except (IndexError, ValueError):
        return None


class DelayProxy:
    """Listens on loopback and forwards to `upstream`, each chunk held for `one_way` seconds
    after it was read; a connection's first client bytes are held until one RTT after it opened
    (the TCP handshake). It records (time, connection, direction, bytes) for every chunk."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.one_way = 0.0
        self.generation = 0
        self.events = []
        self.connections = []  # (id, opened at, label)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.ready.wait()

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def reset(self, one_way):
        """A new delay, and a fresh record."""
        self.one_way = one_way
        self.generation += 1
        self.events = []
        self.connections = []

    async def _handle(self, c_reader, c_writer):
        opened = time.perf_counter()
        one_way = self.one_way
        cid = len(self.connections) + 1
        entry = [cid, opened, "?", self.generation]
        self.connections.append(entry)
        host, port = self.upstream
        try:
            s_reader, s_writer = await asyncio.open_connection(host, port)
        except OSError:
            c_writer.close()
            return
        for w in (c_writer, s_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            self._pump(c_reader, s_writer, cid, "c", one_way, opened + 2 * one_way, entry),
            self._pump(s_reader, c_writer, cid, "s", one_way, 0.0, entry))

    async def _pump(self, reader, writer, cid, direction, one_way, not_before, entry):
        queue = asyncio.Queue()

        async def deliver():
            while True:
                due, chunk = await queue.get()
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                if chunk is None:
                    try:
                        writer.write_eof()
                    except OSError:
                        pass
                    return
                try:
                    writer.write(chunk)
                    await writer.drain()
                except OSError:
                    return

        sender = asyncio.ensure_future(deliver())
        last_due = 0.0
        first = True
        while True:
            try:
                chunk = await reader.read(65536)
            except OSError:
                chunk = b""
            now = time.perf_counter()
            due = max(now, not_before) + one_way
            due = max(due, last_due)
            last_due = due
            if not chunk:
                await queue.put((due, None))
                break
            if first and direction == "c":
                alpn = client_hello_alpn(chunk)
                entry[2] = ("TLS " + ",".join(alpn)) if alpn else ("TLS" if alpn == [] else "?")
            first = False
            if entry[3] != self.generation:
                # A connection opened before this run (the agent's kept connection to Auth, or
                # one of the run before closing): counted in this run's record from now on.
                entry[0], entry[1], entry[2], entry[3] = (
                    len(self.connections) + 1, now, entry[2] + ", opened before this run",
                    self.generation)
                self.connections.append(entry)
            self.events.append((now, entry[0], direction, len(chunk)))
            await queue.put((due, chunk))
        await sender
        try:
            writer.close()
        except OSError:
            pass

    def port_addr(self):
        return f"127.0.0.1:{self.port}"


def echo_check(one_way, rounds=20):
    """Round trips of a small message through the proxy, over an open connection and with the
    connection's opening: what the proxy adds, to compare with what it is set to."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def echo():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    proxy = DelayProxy(("127.0.0.1", server.getsockname()[1]))
    proxy.reset(one_way)
    trips, firsts = [], []
    for _ in range(5):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"x")
            s.recv(16)
            firsts.append(time.perf_counter() - started)
            for _ in range(rounds // 5):
                t = time.perf_counter()
                s.sendall(b"ping")
                got = b""
                while len(got) < 4:
                    got += s.recv(16)
                trips.append(time.perf_counter() - t)
    stop.set()
    server.close()
    return statistics.median(trips), statistics.median(firsts)


# === The cluster and the runs ===


class Bench:
    def __init__(self, kb, work):
        self.kb, self.work = kb, work
        self.env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
        self.children = []

    def setup(self):
        """One token, bot and key per scenario: a recovery starts a new bot instance, which
        would leave another scenario's identity behind."""
        w = self.work
        resources = ["kind: role\nversion: v7\nmetadata:\n  name: access\nspec:\n  allow:\n"
                     "    logins: [ci]\n"]
        self.keys = {}
        for name, _ in SCENARIOS:
            key = w / f"{name}.pem"
            run([self.kb, "keypair", "create", "--static", "--algorithm", "ed25519",
                 "--static-key-path", key, "--format", "json"], env=self.env, capture_output=True)
            shown = out([self.kb, "keypair", "show", "--static-key-path", key], env=self.env)
            public = re.search(r"^public key:\s*(.+)$", shown, re.M).group(1)
            self.keys[name] = key
            resources.append(
                f"kind: token\nversion: v2\nmetadata:\n  name: {name}\nspec:\n"
                f"  bot_name: {name}\n  join_method: bound_keypair\n  roles: [Bot]\n"
                f"  bound_keypair:\n    onboarding:\n      initial_public_key: {public}\n"
                f"    recovery:\n      mode: insecure\n")
            resources.append(f"kind: bot\nversion: v1\nmetadata:\n  name: {name}\nspec:\n"
                             f"  roles: [access]\n")
        (w / "resources.yaml").write_text("---\n".join(resources))
        cluster = subprocess.Popen(
            [self.kb, "dev-cluster", "--listen", "127.0.0.1:0", "--resources",
             w / "resources.yaml", "--ca-out", w / "ca.pem", "--admin-socket", w / "admin.sock"],
            env=dict(self.env, RUST_LOG="warn"), stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        self.children.append(cluster)
        for line in cluster.stdout:
            if line.startswith("proxy_server: "):
                host, port = line.split(": ", 1)[1].strip().rsplit(":", 1)
                break
        else:
            raise SystemExit("the dev cluster did not start")
        self.proxy = DelayProxy((host, int(port)))

    def config(self, name, outputs, storage, roles=None):
        """A tbot.yaml through the delay proxy with `outputs` identity outputs."""
        w = self.work / name
        w.mkdir(exist_ok=True)
        store = ("  type: memory\n" if storage is None
                 else f"  type: directory\n  path: {storage}\n")
        yaml = (f"version: v2\nproxy_server: {self.proxy.port_addr()}\nonboarding:\n"
                f"  join_method: bound_keypair\n  token: {name}\n"
                f"  ca_path: {self.work / 'ca.pem'}\n"
                f"  bound_keypair:\n    static_private_key_path: {self.keys[name]}\n"
                f"storage:\n{store}credential_ttl: 2h\nrenewal_interval: 1h\nservices:\n")
        for i in range(outputs):
            yaml += f"  - type: identity\n    destination:\n      type: directory\n"
            yaml += f"      path: {w / f'out-{i}'}\n"
            if roles:
                yaml += f"    roles: [{roles}]\n"
        path = w / "tbot.yaml"
        path.write_text(yaml)
        return path

    def oneshot(self, config):
        started = time.perf_counter()
        done = subprocess.run([self.kb, "start", "--oneshot", "--config", config], env=self.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"start --oneshot failed: {done.stderr}")
        return wall

    def stop(self):
        for child in reversed(self.children):
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


class Agent:
    """The long-running agent; each renewal is asked for with SIGUSR1 and ends with its
    "renewed" log line."""

    def __init__(self, bench, config):
        self.process = subprocess.Popen(
            [bench.kb, "start", "--config", config], env=bench.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.wait_renewed()

    def wait_renewed(self):
        for line in self.process.stderr:
            if re.search(r"\brenewed\b", line) and "next_in" in line:
                return
            if "ERROR" in line or "WARN" in line and "fail" in line:
                raise SystemExit(f"the agent failed: {line}")
        raise SystemExit("the agent ended")

    def renew(self):
        started = time.perf_counter()
        self.process.send_signal(signal.SIGUSR1)
        self.wait_renewed()
        return time.perf_counter() - started

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=10)


SCENARIOS = [
    ("first", "first join + 1 identity output"),
    ("first-roles", "first join + 1 identity output, roles named"),
    ("rejoin", "oneshot authenticated rejoin + 1 output"),
    ("rejoin5", "oneshot authenticated rejoin + 5 outputs"),
    ("daemon", "agent renewal + 1 output"),
]


def measure(bench, runs, rtts_ms, only=None):
    """{scenario: {rtt ms: {"walls": [...], "trace": [...]}}}, for the scenarios `only` names
    (every one when None)."""
    chosen = [key for key, _ in SCENARIOS if only is None or key in only]
    results = {key: {} for key in chosen}
    p = bench.proxy
    first = bench.config("first", 1, None)
    first_roles = bench.config("first-roles", 1, None, roles="access")
    rejoin = bench.config("rejoin", 1, bench.work / "rejoin" / "storage")
    rejoin5 = bench.config("rejoin5", 5, bench.work / "rejoin5" / "storage")
    daemon = bench.config("daemon", 1, bench.work / "daemon" / "storage")
    p.reset(0)
    if "rejoin" in chosen:
        bench.oneshot(rejoin)   # the identities the rejoins renew
    if "rejoin5" in chosen:
        bench.oneshot(rejoin5)
    agent = Agent(bench, daemon) if "daemon" in chosen else None
    try:
        for rtt in [0, *rtts_ms]:
            one_way = rtt / 2000
            for key, config in [("first", first), ("first-roles", first_roles),
                                ("rejoin", rejoin), ("rejoin5", rejoin5)]:
                if key not in chosen:
                    continue
                walls, trace = [], None
                for i in range(runs + 1):
                    p.reset(one_way)
                    wall = bench.oneshot(config)
                    if i == 0:
                        continue  # warms the page cache and the dev cluster
                    walls.append(wall)
                    trace = trace or snapshot(p)
                results[key][rtt] = {"walls": walls, "trace": trace}
            if agent:
                walls, trace = [], None
                for i in range(runs + 1):
                    p.reset(one_way)
                    wall = agent.renew()
                    if i == 0:
                        continue
                    walls.append(wall)
                    trace = trace or snapshot(p)
                results["daemon"][rtt] = {"walls": walls, "trace": trace}
            print(f"RTT {rtt} ms: " + ", ".join(
                f"{k} {statistics.median(results[k][rtt]['walls']) * 1e3:.0f} ms"
                for k in chosen), flush=True)
    finally:
        if agent:
            agent.stop()
    return results


def snapshot(proxy):
    """The proxy's record as flights: per connection, consecutive chunks one way merged."""
    if not proxy.events:
        return None
    start = min(c[1] for c in proxy.connections)
    flights = []
    for t, cid, direction, size in sorted(proxy.events):
        last = next((f for f in reversed(flights) if f["conn"] == cid), None)
        if last and last["dir"] == direction:
            last["bytes"] += size
        else:
            flights.append({"t": t - start, "conn": cid, "dir": direction, "bytes": size})
    conns = [{"conn": c[0], "t": c[1] - start, "label": c[2]} for c in proxy.connections]
    return {"connections": conns, "flights": flights}


# === The report ===


def median_ms(walls):
    return statistics.median(walls) * 1e3


def rtt_count(res, key, rtt):
    return (median_ms(res[key][rtt]["walls"]) - median_ms(res[key][0]["walls"])) / rtt


def render_trace(trace, rtt):
    """One line per connection: when it opened and its flights, times in RTTs."""
    if not trace:
        return ["(nothing seen)"]
    lines = []
    for c in trace["connections"]:
        label = re.sub(r"teleport-auth@[0-9a-f]+\.teleport\.cluster\.local", "teleport-auth@…",
                       c["label"])
        parts = []
        for f in trace["flights"]:
            # (before its opening: a connection of the run before, with the same number, closing)
            if f["conn"] == c["conn"] and f["t"] >= c["t"]:
                arrow = "→" if f["dir"] == "c" else "←"
                parts.append(f"{arrow}{f['bytes']}@{f['t'] * 1e3 / rtt:.1f}")
        lines.append(f"conn {c['conn']} opened @{c['t'] * 1e3 / rtt:.1f} ({label}): "
                     + " ".join(parts))
    return lines


def render(res, before, meta, echo, rtts_ms, quick):
    lines = [BEGIN, "", f"Measured {meta['when']}, keybound {meta['commit']} (release profile), "
             f"{meta['runs']} runs per cell (medians)."]
    if quick:
        lines += ["", "**Quick run (`--quick`): too few runs to quote.**"]
    lines += ["", "The proxy checked with a plain TCP echo: "
              + "; ".join(f"set {r} ms RTT, measured {e[0] * 1e3:.2f} ms per round trip on an "
                          f"open connection and {e[1] * 1e3:.2f} ms with the connection's opening "
                          f"(expected {r} and {2 * r})" for r, e in echo.items()) + ".", ""]
    head = "| scenario | loopback |" + "".join(f" {r} ms RTT |" for r in rtts_ms)
    head += "".join(f" RTTs at {r} ms |" for r in rtts_ms)
    if before:
        head += f" before ({before['meta']['commit']}), RTTs at {SHOWN_RTT_MS} ms |"
    lines.append(head)
    lines.append("|---|" + "---:|" * (1 + 2 * len(rtts_ms) + (1 if before else 0)))
    for key, title in SCENARIOS:
        if key not in res:
            continue
        row = f"| {title} | {median_ms(res[key][0]['walls']):.1f} ms |"
        row += "".join(f" {median_ms(res[key][r]['walls']):.0f} ms |" for r in rtts_ms)
        row += "".join(f" {rtt_count(res, key, r):.1f} |" for r in rtts_ms)
        if before:
            b = before["results"].get(key)
            row += (f" {rtt_count(before['results'], key, SHOWN_RTT_MS):.1f} |" if b else " |")
        lines.append(row)
    lines += ["", f"What the proxy saw at {SHOWN_RTT_MS} ms RTT, one run of each: every "
              "connection (the ALPN values its ClientHello offered) and its flights of bytes, "
              "→ from keybound, ← from the cluster, `bytes@when` in RTTs from the first "
              "connection's opening (a connection's first flight leaves one RTT after its "
              "opening: the TCP handshake)."]
    for key, title in SCENARIOS:
        if key not in res:
            continue
        lines += ["", f"{title}:", "", "```"]
        lines += render_trace(res[key][SHOWN_RTT_MS]["trace"], SHOWN_RTT_MS)
        lines += ["```"]
    lines += ["", END]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few runs: checks the script")
    parser.add_argument("--runs", type=int, default=7, help="runs per scenario and RTT")
    parser.add_argument("--keybound", type=Path, help="the binary to measure (default: build)")
    parser.add_argument("--save", type=Path, help="write the figures as JSON here")
    parser.add_argument("--before", type=Path, help="figures of an earlier run (--save)")
    parser.add_argument("--commit", help="the commit the binary was built from")
    parser.add_argument("--load", type=Path, help="measure nothing: the figures of a --save")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/PERFORMANCE.md alone")
    parser.add_argument("--only", action="append", choices=[k for k, _ in SCENARIOS],
                        help="measure only this scenario (repeatable); with --no-doc")
    parser.add_argument("--rtt", action="append", type=int,
                        help="measure only at this RTT in ms (repeatable); with --no-doc")
    opts = parser.parse_args()
    runs = 2 if opts.quick else opts.runs
    rtts_ms = opts.rtt or RTTS_MS
    if (opts.only or opts.rtt) and not opts.no_doc:
        parser.error("--only and --rtt measure part of the table: add --no-doc")

    if opts.load:
        raw = json.loads(opts.load.read_text())
        meta = raw["meta"]
        res = {k: {int(r): v for r, v in d.items()} for k, d in raw["results"].items()}
        echo = {int(r): e for r, e in meta["echo"].items()}
    else:
        kb = opts.keybound
        if kb is None:
            run(["cargo", "build", "--release", "--locked", "--features", "tpm"], cwd=ROOT)
            kb = ROOT / "target" / "release" / "keybound"
        commit = out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
        echo = {}
        for rtt in rtts_ms:
            trip, opened = echo_check(rtt / 2000)
            echo[rtt] = (trip, opened)
            print(f"echo through the proxy at {rtt} ms: {trip * 1e3:.2f} ms per round trip, "
                  f"{opened * 1e3:.2f} ms with the opening", flush=True)
        with tempfile.TemporaryDirectory(prefix="keybound-wan-") as tmp:
            bench = Bench(kb, Path(tmp))
            try:
                bench.setup()
                res = measure(bench, runs, rtts_ms, opts.only)
            finally:
                bench.stop()
        meta = {"commit": opts.commit or commit, "runs": runs, "quick": opts.quick,
                "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "echo": {str(r): e for r, e in echo.items()}}
        if opts.save:
            opts.save.write_text(json.dumps(
                {"meta": meta, "results": {k: {str(r): v for r, v in d.items()}
                                           for k, d in res.items()}}, indent=1))
    before = None
    if opts.before:
        raw = json.loads(opts.before.read_text())
        before = {"meta": raw["meta"], "results": {
            k: {int(r): v for r, v in d.items()} for k, d in raw["results"].items()}}
    for key, title in SCENARIOS:
        if key in res:
            print(f"{title}: " + ", ".join(f"{rtt_count(res, key, r):.1f} RTT at {r} ms"
                                          for r in rtts_ms))
            for r in rtts_ms:
                print(f"  at {r} ms, one run:")
                print("\n".join("    " + line for line in render_trace(res[key][r]["trace"], r)))
    if opts.no_doc:
        return
    text = render(res, before, meta, echo, rtts_ms, meta.get("quick", False))
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC} has lost the wan.py markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + text + tail)
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
