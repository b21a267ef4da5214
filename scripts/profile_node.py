"""Where a shardkv member's CPU goes per request, under the same kvbench load as the benchmark.

    python3 scripts/profile_node.py                        # 3 members, put, 100 clients, all members
    python3 scripts/profile_node.py --op range --workers 1 --total 20000

Two views of one run, per member (leader first):
* per thread, from /proc/<pid>/task/*/stat before and after the load: the event-loop thread
  (asyncio, grpc.aio's Python side, Raft, request handling), the executor threads (LMDB commits
  and fsync of the Raft log and of the store), grpc's C-core threads, ZeroMQ's I/O thread
  (user and system CPU, µs per operation);
* the event-loop thread's Python functions (cProfile, members started with SHARDKV_PROFILE),
  grouped by what they are: gRPC/asyncio machinery, protobuf conversion, request handling,
  Raft, storage calls made on the loop, ZeroMQ. cProfile slows Python code down, so the
  groups are shares, not absolute costs; a separate run without the profiler gives the thread
  figures.
"""
from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "node"))
import harness  # noqa: E402

KVBENCH = REPO.parent / "shared" / "bench" / "bin" / "kvbench"

GROUPS = [  # (group, substrings of "file:function"), first match wins
    ("protobuf conversion", ["services/convert.py"]),
    ("request handling", ["shardkv/node/services/", "shardkv/api/errors.py", "node/intake.py"]),
    ("raft core", ["shardkv/raft/"]),
    ("member loop", ["shardkv/node/member.py", "shardkv/mvcc/watch.py"]),
    ("storage on the loop", ["shardkv/mvcc/", "lmdb"]),
    ("zeromq", ["zmq/", "shardkv/node/transport.py"]),
    ("executor hand-off", ["concurrent/futures", "threading.py", "queue"]),
    ("asyncio + grpc.aio (Python side)", ["asyncio/", "grpc/", "inspect.py", "abc", "enum.py",
                                          "isinstance", "built-in"]),
]


def thread_cpu(pids: list[int]) -> dict[tuple[int, str], tuple[int, int]]:
    """(pid, thread kind) -> (user, system) clock ticks so far."""
    out: dict[tuple[int, str], tuple[int, int]] = {}
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                st = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            name = st[st.index("(") + 1:st.rindex(")")]
            fields = st[st.rindex(")") + 2:].split()
            kind = ("event loop" if tid == str(pid) else
                    "grpc core" if name.startswith(("event_engine", "grpc", "default-executo",
                                                    "resolver", "timer")) else
                    "zeromq io" if name.startswith("ZMQ") else "executor (LMDB)")
            u, s = out.get((pid, kind), (0, 0))
            out[(pid, kind)] = (u + int(fields[11]), s + int(fields[12]))
    return out


def run_kvbench(endpoints: str, args: argparse.Namespace) -> dict:
    cmd = [str(KVBENCH), "--endpoints", endpoints, "--conns", str(args.conns), "--clients",
           str(args.clients), "--total", str(args.total)]
    cmd += ["put", "--key-space-size", "100000"] if args.op == "put" else \
        ["range", "key", "--consistency", args.consistency]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True,
                                     timeout=600).stdout.strip().splitlines()[-1])


def leader_first(c: harness.Cluster) -> list[harness.Node]:
    def is_leader(n: harness.Node) -> bool:
        p = harness.etcdctl(n.client_url, "endpoint", "status", "-w", "json")
        return p.returncode == 0 and json.loads(p.stdout)[0]["Status"]["leader"] == \
            json.loads(p.stdout)[0]["Status"]["header"]["member_id"]
    return sorted(c.nodes, key=lambda n: not is_leader(n))


def start(base: Path, args: argparse.Namespace, profile_dir: Path | None) -> harness.Cluster:
    if profile_dir is not None:
        os.environ["SHARDKV_PROFILE"] = str(profile_dir)
    else:
        os.environ.pop("SHARDKV_PROFILE", None)
    c = harness.make_cluster(base, args.members, [f"--client-workers={args.workers}",
                                                  "--heartbeat-interval", "100",
                                                  "--election-timeout", "1000"])
    for n in c.nodes:
        n.start()
    harness.wait_ready(c)
    return c


def endpoints_of(c: harness.Cluster, nodes: list[harness.Node], args) -> str:
    return nodes[0].client_url if args.to == "leader" else c.endpoints


def thread_table(args: argparse.Namespace, base: Path) -> None:
    c = start(base / "threads", args, None)
    try:
        nodes = leader_first(c)
        run_kvbench(endpoints_of(c, nodes, args), argparse.Namespace(**{**vars(args),
                                                                        "total": 2000}))
        pids = {}
        for n in nodes:
            import psutil
            proc = psutil.Process(n.proc.pid)
            pids[n.name] = [proc.pid] + [ch.pid for ch in proc.children(recursive=True)]
        every = [p for ps in pids.values() for p in ps]
        before = thread_cpu(every)
        result = run_kvbench(endpoints_of(c, nodes, args), args)
        after = thread_cpu(every)
        ops = result["ops"]
        hz = os.sysconf("SC_CLK_TCK")
        print(f"kvbench: {result['qps']:.0f} qps, p50 {result['p50_ms']:.1f} ms, "
              f"p99 {result['p99_ms']:.1f} ms ({ops} ops)\n")
        print(f"{'member':<12}{'thread':<20}{'user µs/op':>12}{'sys µs/op':>12}")
        for role, n in zip(["leader"] + ["follower"] * (len(nodes) - 1), nodes):
            total = 0.0
            for key in sorted(k for k in after if k[0] in pids[n.name]):
                u = (after[key][0] - before.get(key, (0, 0))[0]) * 1e6 / hz / ops
                s = (after[key][1] - before.get(key, (0, 0))[1]) * 1e6 / hz / ops
                total += u + s
                kind = key[1] if key[0] == n.proc.pid else f"intake {key[1]}"
                print(f"{role:<12}{kind:<20}{u:>12.0f}{s:>12.0f}")
            print(f"{role:<12}{'total':<20}{total:>24.0f}")
    finally:
        c.close()


def profile_table(args: argparse.Namespace, base: Path) -> None:
    prof = base / "pstats"
    c = start(base / "profiled", args, prof)
    try:
        nodes = leader_first(c)
        run_kvbench(endpoints_of(c, nodes, args), args)
        for n in c.nodes:
            n.kill(15)  # a clean stop writes the profile
    finally:
        c.close()
    print()
    for role, n in zip(["leader"] + ["follower"] * (len(nodes) - 1), nodes):
        path = prof / f"{n.name}.pstats"
        if not path.exists():
            continue
        stats = pstats.Stats(str(path)).stats
        groups: dict[str, float] = {}
        top: dict[str, list[tuple[float, str]]] = {}
        for (file, _line, func), (_cc, _nc, tottime, _ct, _callers) in stats.items():
            if func == "run" and file.endswith("asyncio/runners.py"):
                continue  # the loop's own C time, idle waiting included
            where = f"{file}:{func}"
            group = next((g for g, keys in GROUPS if any(k in where for k in keys)), "other")
            groups[group] = groups.get(group, 0.0) + tottime
            short = f"{Path(file).name}:{func}" if file != "~" else func
            top.setdefault(group, []).append((tottime, short))
        total = sum(groups.values()) or 1.0
        print(f"{role} {n.name}: event-loop Python time by group (cProfile shares)")
        for g, t in sorted(groups.items(), key=lambda kv: -kv[1]):
            names = ", ".join(name for _, name in sorted(top[g], reverse=True)[:3])
            print(f"  {g:<36}{100 * t / total:5.1f} %  ({names})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="--client-workers of each member")
    ap.add_argument("--op", choices=["put", "range"], default="put")
    ap.add_argument("--consistency", choices=["l", "s"], default="l")
    ap.add_argument("--to", choices=["all", "leader"], default="all")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--total", type=int, default=15000)
    ap.add_argument("--no-cprofile", action="store_true")
    args = ap.parse_args()
    if not KVBENCH.exists():
        subprocess.run([str(KVBENCH.parents[1] / "build.sh")], check=True)
    print(time.strftime("%Y-%m-%d %H:%M:%S"), " ".join(sys.argv[1:]) or "(defaults)")
    with tempfile.TemporaryDirectory() as tmp:
        thread_table(args, Path(tmp))
        if not args.no_cprofile:
            profile_table(args, Path(tmp))


if __name__ == "__main__":
    main()
