#!/usr/bin/env python3
"""Times our BO-REP iteration against the PyTorch (eager) and JAX (jit) peer, side by side.

The peer (`../shared/peer`: torch_borep.py, jax_borep.py) is an independent implementation of the
same paper-level BO-REP iteration on the three tasks; this script only runs it, as a measuring
instrument. For each task and thread count it runs ours (`bilevel-bench perf`), PyTorch and JAX
alternately for several rounds, rotating their order each round, every process pinned to the
first N cores. Each implementation reports its own wall milliseconds per iteration (the median
over blocks of I iterations, data loading, compilation and evaluation excluded: each program's
own convention, docs/performance.md). Each is also run at two lengths, K and 2K iterations, and
the children's CPU time (user + system) gives the CPU milliseconds per iteration,
(cpu(2K) − cpu(K)) / K: start-up, data loading, compilation and evaluation cancel, and the
figure does not depend on what else the machine runs.

Prints, per task and thread count: every implementation's median and range over the rounds, the
ratios ours ÷ PyTorch and ours ÷ JAX (of the medians, and their range over rounds), the CPU
milliseconds per iteration, and the machine's load average at each run; the rounds during
which the load exceeded the threads used are marked. `--json` keeps every run.

Usage (from the project root, after `cargo build --release -p bilevel-bench` and the peer's
venv, see its README):

    python3 bilevel-bench/scripts/side_by_side.py --peer-venv ~/.cache/peer-venv \\
        --rounds 5 --threads 1,2 --json side_by_side.json
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = ("hyper-rep", "hyper-opt", "hyper-clean")
# Iterations per timed run: multiples of 6 (every task's period I divides 6), long enough that
# JAX's two dropped blocks (compilation, warm-up) leave several blocks.
DEFAULT_ITERS = {"hyper-rep": 24, "hyper-opt": 48, "hyper-clean": 36}


def cpu_name():
    """The CPU's model name and whether it has AVX-512 (from /proc/cpuinfo)."""
    name, avx512 = "unknown CPU", False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name == "unknown CPU":
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    avx512 = "avx512f" in line.split()
    except OSError:
        pass
    return name, avx512


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def children_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_timed(cmd, cwd, env, threads, log):
    """Runs `cmd` pinned to the first `threads` cores; returns (stdout, CPU seconds, wall seconds)."""
    cores = set(range(threads))

    def pin():
        os.sched_setaffinity(0, cores)

    before, start = children_cpu_seconds(), time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, preexec_fn=pin, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, children_cpu_seconds() - before
    if log:
        log.write(f"$ {' '.join(cmd)}\n{p.stdout}{p.stderr}\n")
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return p.stdout, cpu, wall


class Ours:
    name = "ours"

    def __init__(self, a):
        self.bench = a.bench

    def command(self, task, threads, iters, json_path):
        # perf excludes its first iteration: iters + 1 in all, like the peer's own warm-up.
        return [self.bench, "perf", "--task", task, "--threads", str(threads), "--iters", str(iters)], ROOT

    def ms_per_iter(self, stdout, json_path):
        m = re.search(r"ms_per_iter=([0-9.]+)", stdout)
        if not m:
            sys.exit(f"no ms_per_iter in bilevel-bench perf's output:\n{stdout[-1000:]}")
        return float(m.group(1))


class Peer:
    def __init__(self, a, name, script):
        self.name, self.script = name, script
        self.python = os.path.join(a.peer_venv, "bin", "python")
        self.peer_dir = a.peer_dir

    def command(self, task, threads, iters, json_path):
        cmd = [self.python, self.script, "--task", task, "--iters", str(iters),
               "--threads", str(threads), "--log-every", "0", "--json", json_path]
        if self.name == "pytorch":
            cmd.append("--no-initial-eval")
        return cmd, self.peer_dir

    def ms_per_iter(self, stdout, json_path):
        with open(json_path) as f:
            return float(json.load(f)["ms_per_iter_block_median"])


def spread(values):
    return f"{statistics.median(values):8.1f} [{min(values):.1f}, {max(values):.1f}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-venv", default=os.environ.get("PEER_VENV"), help="the peer's venv (or PEER_VENV)")
    ap.add_argument("--peer-dir", default=os.path.join(os.path.dirname(ROOT), "shared", "peer"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "target", "release", "bilevel-bench"))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--threads", default="1,2", help="thread counts, each with its own rounds")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=None, help="K (default per task: %s)" % DEFAULT_ITERS)
    ap.add_argument("--only", default="ours,pytorch,jax", help="implementations to run")
    ap.add_argument("--json", default=None, help="write every run here")
    ap.add_argument("--log", default=None, help="append every command's output here")
    a = ap.parse_args()

    impls = []
    for name in a.only.split(","):
        if name == "ours":
            if not os.access(a.bench, os.X_OK):
                sys.exit(f"{a.bench} not found: cargo build --release -p bilevel-bench")
            impls.append(Ours(a))
        elif name in ("pytorch", "jax"):
            if not a.peer_venv or not os.path.exists(os.path.join(a.peer_venv, "bin", "python")):
                sys.exit("the peer's venv is needed: --peer-venv DIR or PEER_VENV (../shared/peer/README.md)")
            script = "torch_borep.py" if name == "pytorch" else "jax_borep.py"
            if not os.path.exists(os.path.join(a.peer_dir, script)):
                sys.exit(f"{script} not found in --peer-dir {a.peer_dir}")
            impls.append(Peer(a, name, script))
        else:
            sys.exit(f"--only: unknown implementation {name!r} (ours, pytorch, jax)")
    tasks = a.tasks.split(",")
    for t in tasks:
        if t not in TASKS:
            sys.exit(f"--tasks: unknown task {t!r} ({', '.join(TASKS)})")
    thread_counts = [int(t) for t in a.threads.split(",")]
    if max(thread_counts) > os.cpu_count():
        sys.exit(f"--threads {max(thread_counts)} exceeds the {os.cpu_count()} cores")

    cpu, avx512 = cpu_name()
    print(f"CPU: {cpu} ({os.cpu_count()} cores, AVX-512: {'yes' if avx512 else 'no'})")
    log = open(a.log, "a") if a.log else None
    env = dict(os.environ)
    scratch = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"side-by-side-{os.getpid()}.json")
    runs = []
    for task in tasks:
        k = a.iters or DEFAULT_ITERS[task]
        for threads in thread_counts:
            for r in range(a.rounds):
                order = impls[r % len(impls):] + impls[:r % len(impls)]
                for impl in order:
                    row = {"task": task, "threads": threads, "round": r, "impl": impl.name, "iters": k}
                    cpu_seconds = {}
                    for length in (k, 2 * k):
                        load = load_average()
                        cmd, cwd = impl.command(task, threads, length, scratch)
                        out, cpu_s, wall_s = run_timed(cmd, cwd, env, threads, log)
                        cpu_seconds[length] = cpu_s
                        row[f"load_{length}"] = load
                        row[f"wall_s_{length}"] = wall_s
                        if length == 2 * k:
                            row["ms_per_iter"] = impl.ms_per_iter(out, scratch)
                    row["cpu_ms_per_iter"] = 1e3 * (cpu_seconds[2 * k] - cpu_seconds[k]) / k
                    row["load"] = max(row[f"load_{k}"], row[f"load_{2 * k}"])
                    runs.append(row)
                    print(f"  {task} t={threads} round {r} {impl.name:8s} {row['ms_per_iter']:8.1f} ms/iter, "
                          f"CPU {row['cpu_ms_per_iter']:8.1f} ms/iter, load {row['load']:.2f}", flush=True)
    if os.path.exists(scratch):
        os.remove(scratch)

    print()
    print(f"CPU: {cpu}; {a.rounds} rounds, order rotated; medians [min, max] over rounds")
    print("| task | threads | impl | ms/iter | CPU ms/iter | ours ÷ impl | ours ÷ impl, per round | rounds loaded |")
    print("|---|---|---|---|---|---|---|---|")
    for task in tasks:
        for threads in thread_counts:
            sel = [x for x in runs if x["task"] == task and x["threads"] == threads]
            ours = {x["round"]: x["ms_per_iter"] for x in sel if x["impl"] == "ours"}
            for impl in impls:
                mine = [x for x in sel if x["impl"] == impl.name]
                ms = [x["ms_per_iter"] for x in mine]
                cpu_ms = [x["cpu_ms_per_iter"] for x in mine]
                loaded = sum(1 for x in mine if x["load"] > threads + 0.5)
                ratio, per_round = "", ""
                if ours and impl.name != "ours":
                    ratio = f"{statistics.median(ours.values()) / statistics.median(ms):.2f}"
                    rr = [ours[x["round"]] / x["ms_per_iter"] for x in mine if x["round"] in ours]
                    per_round = f"[{min(rr):.2f}, {max(rr):.2f}]"
                print(f"| {task} | {threads} | {impl.name} | {spread(ms)} | {spread(cpu_ms)} | {ratio} | "
                      f"{per_round} | {loaded} of {len(mine)} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu": cpu, "avx512": avx512, "rounds": a.rounds, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
