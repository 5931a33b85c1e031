#!/usr/bin/env python3
"""Side by side: `keybound start --oneshot` and the binary size of several commits, in one run.

    scripts/perf-compare.py 860b768 HEAD           # each commit's release build, measured together
    scripts/perf-compare.py --runs 30 A B C

Each commit is built with the release profile (fat LTO, stripped) from a worktree of its own,
all into one shared target directory (so the dependencies build once), and the binary is kept
there by commit (`bins/keybound-<sha>`: a second comparison of the same commit does not build
it again; `--build-only` builds them and stops). Then one dev cluster and
one set of keys serve every binary, and the runs are interleaved (A, B, A, B, ...), so that
whatever else the machine does weighs on each alike. Reported per commit and backend: wall time
exec to exit (p50, p90), CPU time (user + system, p50, from the kernel's accounting of the
reaped child), peak RSS (median of 5, from GNU time), and the stripped size.

A refactor that claims "no change" is held to within 5% of the previous commit on these.
"""

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
perf = __import__("perf")  # scripts/perf.py: the dev cluster and keys, the process timers

ROOT = perf.ROOT
# One backend of each kind: a file key, a key in SoftHSM, a key in swtpm.
MEASURED = ("file ed25519", "softhsm ecdsa-p256", "swtpm ecdsa-p256")


def build(rev, work, target):
    """The release binary of `rev`, copied out of the shared target directory; kept there by
    commit (`bins/keybound-<sha>`), so that comparing a commit again does not build it again."""
    sha = perf.out(["git", "rev-parse", "--short=12", rev], cwd=ROOT)
    kept = target / "bins" / f"keybound-{sha}"
    if kept.exists():
        return sha[:7], kept
    tree = work / f"tree-{sha}"
    perf.run(["git", "worktree", "add", "--detach", "--force", tree, sha], cwd=ROOT,
             capture_output=True)
    try:
        perf.run(["cargo", "build", "--release", "--locked", *perf.FEATURES,
                  "--target-dir", target], cwd=tree)
        kept.parent.mkdir(parents=True, exist_ok=True)
        staged = kept.with_suffix(".new")
        staged.write_bytes((target / "release" / "keybound").read_bytes())
        staged.chmod(0o755)
        staged.rename(kept)
        return sha[:7], kept
    finally:
        perf.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="+", help="commits to compare, oldest first")
    parser.add_argument("--runs", type=int, default=30, help="oneshot runs per commit and backend")
    parser.add_argument("--build-only", action="store_true",
                        help="build (and keep) the commits' binaries, measure nothing")
    parser.add_argument("--target-dir", default=str(ROOT / "target" / "perf-compare"),
                        help="the shared cargo target directory")
    opts = parser.parse_args()
    target = Path(opts.target_dir)

    with tempfile.TemporaryDirectory(prefix="keybound-compare-") as tmp:
        work = Path(tmp)
        binaries = [build(rev, work, target) for rev in opts.revs]
        if opts.build_only:
            for sha, binary in binaries:
                print(f"{sha} {binary}")
            return
        # One cluster and one set of keys (made by the newest binary) for every binary.
        bench = perf.Oneshot(binaries[-1][1], work / "oneshot")
        (work / "oneshot").mkdir()
        walls = {(sha, b): [] for sha, _ in binaries for b in MEASURED}
        cpus = {key: [] for key in walls}
        rss = {key: [] for key in walls}
        try:
            bench.setup()
            for round_ in range(opts.runs + 3):
                for sha, binary in binaries:
                    bench.kb = binary
                    for name, wall, cpu, peak in one_round(bench, round_ >= 3 and round_ < 8):
                        if (sha, name) in walls and round_ >= 3:
                            walls[(sha, name)].append(wall)
                            cpus[(sha, name)].append(cpu)
                            if peak is not None:
                                rss[(sha, name)].append(peak)
        finally:
            bench.stop()
        report(binaries, walls, cpus, rss)


def report(binaries, walls, cpus, rss):
    """One line per commit and backend."""
    print(f"{'commit':10} {'backend':20} {'p50':>9} {'p90':>9} {'CPU p50':>9} {'peak RSS':>10} "
          f"{'size':>10}")
    for sha, binary in binaries:
        size = binary.stat().st_size
        for (s, name), values in walls.items():
            if s != sha:
                continue
            values.sort()
            p50 = perf.percentile(values, 0.5) * 1000
            p90 = perf.percentile(values, 0.9) * 1000
            cpu = statistics.median(cpus[(s, name)]) * 1000
            peak = statistics.median(rss[(s, name)]) / 1024
            print(f"{sha:10} {name:20} {p50:7.2f}ms {p90:7.2f}ms {cpu:7.2f}ms {peak:8.1f}MiB "
                  f"{size / 1e6:8.2f}MB")


def one_round(bench, with_rss):
    """One `start --oneshot` per backend with the bench's current binary: (backend, wall, CPU
    time, RSS)."""
    results = []
    for i, (name, (args, _)) in enumerate(bench.backends.items()):
        if name not in MEASURED:
            continue
        cmd = [bench.kb, "start", "--oneshot", "--proxy-server", bench.proxy, "--ca-path",
               bench.work / "ca.pem", "--join-method", "bound_keypair", "--token", f"perf-{i}",
               "--destination-dir", bench.work / f"out-{i}", "--storage", "memory://", *args]
        # The run is the only child reaped in between: the difference is its own CPU time.
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = perf.timed_process(cmd, bench.env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        peak = perf.peak_rss_kib(cmd, bench.env) if with_rss else None
        results.append((name, wall, cpu, peak))
    return results


if __name__ == "__main__":
    sys.exit(main())
