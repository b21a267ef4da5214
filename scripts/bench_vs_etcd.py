"""Side-by-side benchmark: real etcd and shardkv, same topology, same load generator.

    python3 scripts/bench_vs_etcd.py                  # full run (a few minutes)
    python3 scripts/bench_vs_etcd.py --quick          # smoke run
    python3 scripts/bench_vs_etcd.py --workloads put-1c,range-l-1c --json-out r.json

Installs what it needs (etcd-server with apt if /usr/bin/etcd is missing; kvbench with
../shared/bench/build.sh if its binary is missing), then for each system in turn (etcd first,
then shardkv): starts an N-member cluster on free loopback ports with data dirs under a temp
dir, times process start to healthy, runs every workload with kvbench (the same flags for
both), samples the members' peak RSS (psutil, every 0.2 s) and CPU time (before/after each
workload, split leader/followers), then loads a big store on a fresh cluster. Prints one table
of shardkv/etcd ratios and the PASS/FAIL of the performance targets; --json-out and
--markdown-out write the same results for docs/performance.md.

A "system under test" is a small class (start/endpoints/leader_endpoint/pids/data_dirs/stop),
so a proxy or sharded topology can be added next to EtcdCluster and ShardkvCluster.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "node"))
from harness import free_ports  # noqa: E402  (the tests' free-port helper)
BENCH_DIR = (REPO / ".." / "shared" / "bench").resolve()
KVBENCH = BENCH_DIR / "bin" / "kvbench"
GiB = 1024 ** 3
VALUE = "v" * 256
RANGE_KEY = "kvbench-range-key"  # the single key the range workloads read (8 B keys elsewhere)


# --------------------------------------------------------------------------------------------
# setup

def ensure_tools() -> None:
    """etcd + etcdctl from apt, kvbench from ../shared/bench/build.sh, when missing."""
    if not Path("/usr/bin/etcd").exists() or shutil.which("etcdctl") is None:
        print("installing etcd-server / etcd-client with apt-get ...", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server", "etcd-client"],
                       check=True, env=env)
    if not os.access(KVBENCH, os.X_OK):
        print(f"building kvbench with {BENCH_DIR / 'build.sh'} ...", file=sys.stderr)
        subprocess.run([str(BENCH_DIR / "build.sh")], check=True)


TXN_BUG = 'ModRevision(k), ">=", 0)'


def kvbench_for_txn(tmp: Path, log) -> Path:
    """kvbench's txn-put compares ModRevision ">=" 0, which clientv3 3.4 does not know (it
    panics "Unknown result op" before sending anything). While ../shared/bench has that, build
    a copy whose compare is ModRevision ">" -1 (the same always-true compare) into ``tmp``, with
    build.sh's recipe, and use it for txn-put on both systems."""
    src = (BENCH_DIR / "kvbench" / "main.go").read_text()
    if TXN_BUG not in src:
        return KVBENCH
    gopath = tmp / "gopath"
    (gopath / "src" / "kvbench").mkdir(parents=True, exist_ok=True)
    (gopath / "src" / "kvbench" / "main.go").write_text(
        src.replace(TXN_BUG, 'ModRevision(k), ">", -1)'))
    out = tmp / "kvbench-txnfix"
    env = dict(os.environ, GO111MODULE="off", GOPATH=f"{gopath}:/usr/share/gocode", GOFLAGS="")
    env.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build"))
    subprocess.run(["go", "build", "-o", str(out), "."], cwd=gopath / "src" / "kvbench",
                   env=env, check=True)
    log(f"txn-put: kvbench's compare '>=' 0 panics in clientv3 3.4; using {out} "
        "(compare '>' -1, otherwise identical)")
    return out


def etcdctl(endpoints: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return subprocess.run(["etcdctl", "--endpoints=" + endpoints, "--dial-timeout=2s",
                           "--command-timeout=20s", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def port_open(endpoint: str) -> bool:
    host, _, port = endpoint.rpartition("//")[2].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.2):
            return True
    except OSError:
        return False


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


# --------------------------------------------------------------------------------------------
# systems under test

@dataclass
class Member:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None


@dataclass
class System:
    """N members on loopback, started by ``command`` + etcd's flags. Subclasses only name the
    system and its command; a proxy topology would override endpoints() and pids()."""
    label: str
    command: list[str]
    base: Path
    size: int
    extra_flags: list[str] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    _leader: str | None = None

    def start(self) -> float:
        """Start a new cluster (fresh data dirs); return the start time (time.monotonic())."""
        self.base.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * self.size)
        names = [f"m{i}" for i in range(self.size)]
        self.members = [
            Member(nm, f"http://127.0.0.1:{ports[2 * i]}", f"http://127.0.0.1:{ports[2 * i + 1]}",
                   self.base / nm, self.base / f"{nm}.log") for i, nm in enumerate(names)]
        for m in self.members:
            shutil.rmtree(m.data_dir, ignore_errors=True)
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        token = f"bench-{self.label}-{os.getpid()}-{int(time.time())}"
        t0 = time.monotonic()
        for m in self.members:
            args = ["--name", m.name, "--data-dir", str(m.data_dir),
                    "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                    "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                    "--initial-cluster", initial, "--initial-cluster-token", token,
                    "--initial-cluster-state", "new",
                    "--heartbeat-interval", "100", "--election-timeout", "1000",
                    "--quota-backend-bytes", str(8 * GiB), *self.extra_flags]
            with open(m.log_path, "ab") as log:
                m.proc = subprocess.Popen([*self.command, *args], stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True, cwd=str(REPO))
        self._leader = None
        return t0

    def wait_healthy(self, timeout: float = 60) -> None:
        """Every member answers `etcdctl endpoint health` (a linearizable Range)."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"{self.label} {m.name} exited ({m.proc.returncode}); "
                                       f"log {m.log_path}:\n{m.log_path.read_text()[-2000:]}")
            # etcdctl only once every client port takes connections: one that dialled a closed
            # port would sit out grpc-go's 1 s reconnect backoff, measuring the poller
            if all(port_open(ep) for ep in self.endpoint_list()):
                try:
                    if etcdctl(self.endpoints(), "endpoint", "health",
                               timeout=10).returncode == 0:
                        return
                except subprocess.TimeoutExpired:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} not healthy after {timeout} s; "
                                   f"logs in {self.base}")
            time.sleep(0.02)

    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self.members)

    def endpoint_list(self) -> list[str]:
        return [m.client_url for m in self.members]

    def status(self) -> list[dict]:
        r = etcdctl(self.endpoints(), "endpoint", "status", "-w", "json")
        if r.returncode != 0 and not r.stdout.strip():
            raise RuntimeError(f"endpoint status failed: {r.stderr.strip()}")
        return json.loads(r.stdout)

    def leader_endpoint(self, refresh: bool = True) -> str:
        if self._leader and not refresh:
            return self._leader
        deadline = time.monotonic() + 30
        while True:
            try:
                for st in self.status():
                    s = st["Status"]
                    if s["leader"] and s["header"]["member_id"] == s["leader"]:
                        self._leader = st["Endpoint"]
                        return self._leader
            except (RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: no leader found")
            time.sleep(0.2)

    def member_pids(self) -> dict[str, list[int]]:
        """member client URL -> its pids (the process and any descendants)."""
        out = {}
        for m in self.members:
            if m.proc is None or m.proc.poll() is not None:
                continue
            pids = [m.proc.pid]
            try:
                pids += [c.pid for c in psutil.Process(m.proc.pid).children(recursive=True)]
            except psutil.Error:
                pass
            out[m.client_url] = pids
        return out

    def pids(self) -> list[int]:
        return [p for ps in self.member_pids().values() for p in ps]

    def data_dirs(self) -> dict[str, Path]:
        return {m.client_url: m.data_dir for m in self.members}

    def stop(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.send_signal(signal.SIGTERM)
        for m in self.members:
            if m.proc is None:
                continue
            try:
                m.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(timeout=5)
            m.proc = None


class EtcdCluster(System):
    def __init__(self, base: Path, size: int):
        super().__init__("etcd", ["/usr/bin/etcd"], base, size, ["--logger", "zap"])


class ShardkvCluster(System):
    def __init__(self, base: Path, size: int, command: list[str] | None = None):
        super().__init__("shardkv", command or [sys.executable, "-m", "shardkv.node.cli"],
                         base, size)


# --------------------------------------------------------------------------------------------
# measurement

class Sampler:
    """Peak RSS per member (polled every 0.2 s in a thread) and CPU time per member
    (before/after), for the member processes of ``system``."""

    def __init__(self, system: System):
        self.system = system
        self.pids = system.member_pids()
        self.procs = {ep: [psutil.Process(p) for p in ps] for ep, ps in self.pids.items()}
        self.peak = {ep: 0 for ep in self.procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _per_member(self, read) -> dict[str, float]:
        """member -> ``read(process)`` summed over its processes (gone ones count 0)."""
        out = {}
        for ep, procs in self.procs.items():
            total = 0
            for p in procs:
                try:
                    total += read(p)
                except psutil.Error:
                    pass
            out[ep] = total
        return out

    def _cpu(self) -> dict[str, float]:
        return self._per_member(lambda p: sum(p.cpu_times()[:2]))

    def rss(self) -> dict[str, int]:
        return self._per_member(lambda p: p.memory_info().rss)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for ep, v in self.rss().items():
                self.peak[ep] = max(self.peak[ep], v)
            self._stop.wait(0.2)

    def __enter__(self) -> "Sampler":
        self.cpu0 = self._cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for ep, v in self.rss().items():
            self.peak[ep] = max(self.peak[ep], v)
        self.cpu1 = self._cpu()

    def cpu_seconds(self) -> dict[str, float]:
        return {ep: self.cpu1[ep] - self.cpu0.get(ep, 0.0) for ep in self.cpu1}


def kvbench(endpoints: list[str], op: list[str], conns: int, clients: int,
            duration: float | None = None, total: int | None = None,
            timeout: float = 900, binary: Path | None = None) -> dict:
    cmd = [str(binary or KVBENCH), "--endpoints", ",".join(e.split("://")[-1] for e in endpoints),
           "--conns", str(conns), "--clients", str(clients)]
    if duration is not None:
        cmd += ["--duration", f"{duration}s"]
    if total is not None:
        cmd += ["--total", str(total)]
    cmd += op
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"kvbench failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-1500:]}")
    out = json.loads(lines[-1])
    out["cmd"] = " ".join(shlex.quote(c) for c in cmd[1:])
    return out


@dataclass
class Workload:
    name: str
    op: list[str]
    conns: int
    clients: int
    where: str            # "leader", "all", or "mode" (follows --endpoints-mode)
    watch: bool = False


def workloads(args) -> list[Workload]:
    ks = ["--key-space-size", "100000"]
    return [
        Workload("put-1c", ["put", *ks], 1, 1, "leader"),
        Workload("put-100c-leader", ["put", *ks], 10, 100, "leader"),
        Workload("put-100c-all", ["put", *ks], 10, 100, "all"),
        Workload("range-l-1c", ["range", RANGE_KEY, "--consistency", "l"], 1, 1, "mode"),
        Workload("range-l-100c-all", ["range", RANGE_KEY, "--consistency", "l"], 10, 100, "all"),
        Workload("range-s-1c", ["range", RANGE_KEY, "--consistency", "s"], 1, 1, "mode"),
        Workload("range-s-100c-all", ["range", RANGE_KEY, "--consistency", "s"], 10, 100, "all"),
        Workload("txn-put-100c", ["txn-put", *ks], 10, 100, "mode"),
        Workload("mixed-90r-100c", ["mixed", "--read-percent", "90", *ks], 10, 100, "mode"),
        Workload("watch-latency-100w", ["watch-latency", "--watchers", "100"], 10, 1, "mode",
                 watch=True),
    ]


BIG = "big-store"
START = "start-to-healthy"


def run_system(system: System, wls: list[Workload], args, log) -> dict:
    res: dict = {"system": system.label, "workloads": {}, "members": args.members}
    try:
        # start to healthy, on a new cluster
        if START in args.selected or wls:
            t0 = system.start()
            system.wait_healthy()
            res["start_to_healthy_s"] = time.monotonic() - t0
            log(f"[{system.label}] start to healthy: {res['start_to_healthy_s']:.2f} s")
            r = etcdctl(system.endpoints(), "put", RANGE_KEY, VALUE)
            if r.returncode != 0:
                raise RuntimeError(f"put {RANGE_KEY}: {r.stderr}")
            for w in wls:
                try:
                    res["workloads"][w.name] = run_workload(system, w, args, log)
                except Exception as exc:  # one failed workload must not lose the others
                    log(f"[{system.label}] {w.name} FAILED: {exc}")
                    res["workloads"][w.name] = {"error": str(exc)[:500]}
            system.stop()
        if BIG in args.selected:
            try:
                res["big"] = run_big(system, args, log)
            except Exception as exc:
                log(f"[{system.label}] {BIG} FAILED: {exc}")
                res["big"] = {"error": str(exc)[:500]}
            system.stop()
    finally:
        system.stop()
    return res


def endpoints_for(system: System, where: str, args) -> list[str]:
    if where == "mode":
        where = args.endpoints_mode
    return [system.leader_endpoint()] if where == "leader" else system.endpoint_list()


def run_workload(system: System, w: Workload, args, log) -> dict:
    leader = system.leader_endpoint()
    eps = endpoints_for(system, w.where, args)
    with Sampler(system) as s:
        if w.watch:
            out = kvbench(eps, w.op, w.conns, w.clients, total=args.watch_total)
        else:
            out = kvbench(eps, w.op, w.conns, w.clients, duration=args.duration,
                          binary=args.txn_kvbench if w.op[0] == "txn-put" else None)
    out.update(role_stats(s, leader, out["ops"]))
    out["endpoints"] = eps
    log(f"[{system.label}] {w.name:20s} {out['qps']:9.0f} qps  p50 {out['p50_ms']:7.2f} ms  "
        f"p99 {out['p99_ms']:7.2f} ms  errors {out['errors']}  "
        f"cpu {fmt(out['cpu_us_per_op'], 0)} µs/op  "
        f"peak rss {out['peak_rss_max'] / 2**20:.0f} MiB")
    return out


def role_stats(s: Sampler, leader: str, ops: int) -> dict:
    cpu = s.cpu_seconds()
    lead = cpu.get(leader, 0.0)
    foll = sum(v for ep, v in cpu.items() if ep != leader)
    per = (lambda x: x * 1e6 / ops) if ops else (lambda x: None)
    return {
        "leader": leader,
        "cpu_s": cpu, "cpu_us_per_op": per(lead + foll),
        "cpu_us_per_op_leader": per(lead), "cpu_us_per_op_followers": per(foll),
        "peak_rss": dict(s.peak), "peak_rss_max": max(s.peak.values(), default=0),
    }


def run_big(system: System, args, log) -> dict:
    """A fresh cluster loaded with --big-keys sequential keys: load time, disk, RSS, paged
    range over 10,000 keys."""
    system.start()
    system.wait_healthy()
    leader = system.leader_endpoint()
    n = args.big_keys
    eps = endpoints_for(system, args.big_endpoints, args)
    t = time.monotonic()
    with Sampler(system) as s:
        try:
            load = kvbench(eps, ["put", "--sequential-keys"], 10, 100, total=n,
                           timeout=args.big_timeout)
        except subprocess.TimeoutExpired:
            # kvbench was killed at --big-timeout: measure the store as far as it got
            took = time.monotonic() - t
            r = etcdctl(leader, "get", "", "--prefix", "--keys-only", "--limit=1", "-w", "json",
                        timeout=120)
            done = int(json.loads(r.stdout).get("count", 0)) if r.returncode == 0 else 0
            load = {"op": "put", "ops": done, "errors": None, "seconds": took,
                    "qps": done / took, "timed_out": True}
            log(f"[{system.label}] load stopped at --big-timeout {args.big_timeout:.0f} s "
                f"with {done} of {n} keys; measuring that store")
    load_wall = time.monotonic() - t
    out = {"keys": load["ops"] if load.get("timed_out") else n, "keys_wanted": n,
           "load": load, "load_wall_s": load_wall}
    out.update(role_stats(s, leader, load["ops"]))
    log(f"[{system.label}] loaded {load['ops']} keys ({load['errors']} errors) in "
        f"{load_wall:.1f} s ({load['qps']:.0f} qps)")
    time.sleep(2)  # let followers apply and the backend commit
    rss = Sampler(system).rss()
    out["rss_after_load"] = rss
    out["rss_after_load_max"] = max(rss.values(), default=0)
    out["disk_bytes"] = {ep: dir_size(d) for ep, d in system.data_dirs().items()}
    out["disk_bytes_max"] = max(out["disk_bytes"].values(), default=0)
    page_n = min(10000, n)
    # (a) one etcdctl request with --limit (includes etcdctl's own start, ~20-50 ms)
    t = time.monotonic()
    r = etcdctl(leader, "get", "", "--prefix", "--keys-only", f"--limit={page_n}", "-w", "json",
                timeout=120)
    out["etcdctl_limit_s"] = time.monotonic() - t
    if r.returncode != 0:
        raise RuntimeError(f"etcdctl get --limit: {r.stderr}")
    got = json.loads(r.stdout)
    out["etcdctl_limit_keys"] = len(got.get("kvs", []))
    out["count"] = int(got.get("count", 0))
    # (b) paging, pages of limit 1000, each from the previous page's last key + NUL. Over gRPC
    # (the repo's generated stubs, one channel): kvbench's sequential keys are 8 B binary with
    # leading NULs, which etcdctl can not take as argv, so etcdctl can only do (a).
    out.update(grpc_paged(leader, page_n))
    log(f"[{system.label}] disk max {out['disk_bytes_max'] / 2**20:.0f} MiB, rss max "
        f"{out['rss_after_load_max'] / 2**20:.0f} MiB, get --limit {page_n}: "
        f"{out['etcdctl_limit_s'] * 1000:.0f} ms, "
        f"paged grpc {out.get('grpc_paged_s', float('nan')) * 1000:.0f} ms")
    return out


def grpc_paged(endpoint: str, n: int) -> dict:
    try:
        import grpc
        sys.path.insert(0, str(REPO))
        from shardkv.api.etcdserverpb import rpc_pb2 as pb
        from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc
    except ImportError as exc:
        return {"grpc_paged_error": str(exc)}
    with grpc.insecure_channel(endpoint.split("://")[-1]) as ch:
        kv = rpc.KVStub(ch)
        kv.Range(pb.RangeRequest(key=b"\x00", range_end=b"\x00", limit=1, keys_only=True),
                 timeout=30)  # connect outside the timing
        t = time.monotonic()
        key, fetched, pages = b"\x00", 0, 0
        while fetched < n:
            resp = kv.Range(pb.RangeRequest(key=key, range_end=b"\x00",
                                            limit=min(1000, n - fetched), keys_only=True),
                            timeout=30)
            pages += 1
            fetched += len(resp.kvs)
            if not resp.kvs or not resp.more:
                break
            key = resp.kvs[-1].key + b"\x00"
        return {"grpc_paged_s": time.monotonic() - t, "grpc_paged_keys": fetched,
                "grpc_paged_pages": pages}


# --------------------------------------------------------------------------------------------
# report

def fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def mib(v) -> str:
    return "-" if v is None else f"{v / 2**20:,.0f}"


def ratio(a, b):
    try:
        return a / b if a is not None and b else None
    except TypeError:
        return None


def get(res: dict | None, *path):
    cur = res
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def targets(e: dict | None, s: dict | None) -> list[dict]:
    out = []

    def add(name, value, limit, ok_if):
        passed = None if value is None else (value >= limit if ok_if == ">=" else value <= limit)
        out.append({"target": name, "value": value, "limit": f"{ok_if} {limit}",
                    "result": "n/a" if passed is None else ("PASS" if passed else "FAIL")})

    for w in ("put-100c-leader", "put-100c-all"):
        add(f"{w} qps ratio", ratio(get(s, "workloads", w, "qps"), get(e, "workloads", w, "qps")),
            0.5, ">=")
    for w in ("range-l-100c-all", "range-s-100c-all"):
        add(f"{w} qps ratio", ratio(get(s, "workloads", w, "qps"), get(e, "workloads", w, "qps")),
            0.5, ">=")
    for w in ("put-1c", "range-l-1c", "range-s-1c"):
        add(f"{w} p50 ratio", ratio(get(s, "workloads", w, "p50_ms"),
                                    get(e, "workloads", w, "p50_ms")), 2.0, "<=")
    add("watch-latency p99 ratio", ratio(get(s, "workloads", "watch-latency-100w", "p99_ms"),
                                         get(e, "workloads", "watch-latency-100w", "p99_ms")),
        2.0, "<=")
    ke, ks = get(e, "big", "keys"), get(s, "big", "keys")
    same = ke is not None and ke == ks  # a load stopped at --big-timeout is not comparable
    add(f"big-store RSS ratio ({fmt(ks or ke)} keys"
        f"{'' if same or ke is None or ks is None else f' vs etcd {fmt(ke)}: n/a'})",
        ratio(get(s, "big", "rss_after_load_max"), get(e, "big", "rss_after_load_max"))
        if same else None, 1.0, "<=")
    add("shardkv start-to-healthy s", get(s, "start_to_healthy_s"), 2.0, "<=")
    return out


def tables(result: dict) -> str:
    e, s = result.get("etcd"), result.get("shardkv")
    names = []
    for r in (e, s):
        for n in (r or {}).get("workloads", {}):
            if n not in names:
                names.append(n)
    lines = ["| workload | etcd qps | shardkv qps | ratio | etcd p50/p99 ms | shardkv p50/p99 ms "
             "| etcd peak RSS MiB | shardkv peak RSS MiB | etcd CPU µs/op (L+F) "
             "| shardkv CPU µs/op (L+F) | CPU ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def cell_lat(w):
        if w is None:
            return "-"
        if "error" in w:
            return "error"
        return f"{w['p50_ms']:.2f} / {w['p99_ms']:.2f}"

    def cell_cpu(w):
        if w is None or "error" in w:
            return "-"
        return (f"{fmt(w['cpu_us_per_op'], 0)} ({fmt(w['cpu_us_per_op_leader'], 0)}+"
                f"{fmt(w['cpu_us_per_op_followers'], 0)})")

    for n in names:
        we, ws = get(e, "workloads", n), get(s, "workloads", n)
        qe, qs = get(we, "qps"), get(ws, "qps")
        lines.append(
            f"| {n} | {fmt(qe, 0)} | {fmt(qs, 0)} | {fmt(ratio(qs, qe))} | {cell_lat(we)} | "
            f"{cell_lat(ws)} | {mib(get(we, 'peak_rss_max'))} | {mib(get(ws, 'peak_rss_max'))} | "
            f"{cell_cpu(we)} | {cell_cpu(ws)} | "
            f"{fmt(ratio(get(ws, 'cpu_us_per_op'), get(we, 'cpu_us_per_op')))} |")

    out = ["\n".join(lines)]
    # big store + start
    rows = [("start to healthy (s)", get(e, "start_to_healthy_s"), get(s, "start_to_healthy_s"),
             lambda v: fmt(v))]
    if get(e, "big") or get(s, "big"):
        keys = get(s, "big", "keys") or get(e, "big", "keys")
        rows += [
            ("keys loaded", get(e, "big", "keys"), get(s, "big", "keys"), lambda v: fmt(v)),
            (f"load time (s, {fmt(get(e, 'big', 'keys_wanted') or keys)} keys wanted)", get(e, "big", "load_wall_s"),
             get(s, "big", "load_wall_s"), lambda v: fmt(v, 1)),
            ("load qps (100 clients)", get(e, "big", "load", "qps"), get(s, "big", "load", "qps"),
             lambda v: fmt(v, 0)),
            ("load CPU µs/op (all members)", get(e, "big", "cpu_us_per_op"),
             get(s, "big", "cpu_us_per_op"), lambda v: fmt(v, 0)),
            ("data dir MiB (max member)", get(e, "big", "disk_bytes_max"),
             get(s, "big", "disk_bytes_max"), mib),
            ("data dir MiB (per member)", get(e, "big", "disk_bytes"), get(s, "big", "disk_bytes"),
             lambda v: "/".join(mib(x) for x in v.values())),
            ("RSS after load MiB (max member)", get(e, "big", "rss_after_load_max"),
             get(s, "big", "rss_after_load_max"), mib),
            ("RSS after load MiB (per member)", get(e, "big", "rss_after_load"),
             get(s, "big", "rss_after_load"), lambda v: "/".join(mib(x) for x in v.values())),
            ("peak RSS during load MiB (max member)", get(e, "big", "peak_rss_max"),
             get(s, "big", "peak_rss_max"), mib),
            ("etcdctl get --prefix --limit 10000 (ms)", get(e, "big", "etcdctl_limit_s"),
             get(s, "big", "etcdctl_limit_s"), lambda v: fmt(v * 1000, 0)),
            ("gRPC paged, 10 x limit 1000 (ms)", get(e, "big", "grpc_paged_s"),
             get(s, "big", "grpc_paged_s"), lambda v: fmt(v * 1000, 0)),
        ]
    t = ["| measure | etcd | shardkv | ratio |", "|---|---:|---:|---:|"]
    for label, ve, vs, f in rows:
        r = ratio(vs, ve) if isinstance(ve, (int, float)) and isinstance(vs, (int, float)) else None
        t.append(f"| {label} | {'-' if ve is None else f(ve)} | {'-' if vs is None else f(vs)} "
                 f"| {fmt(r)} |")
    out.append("\n".join(t))
    tg = ["| target | shardkv/etcd (or s) | limit | result |", "|---|---:|---|---|"]
    for x in result.get("targets", []):
        tg.append(f"| {x['target']} | {fmt(x['value'])} | {x['limit']} | {x['result']} |")
    out.append("\n".join(tg))
    return "\n\n".join(out)


# --------------------------------------------------------------------------------------------

def git_state() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "shardkv"],
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        dirty = [ln[3:] for ln in dirty if ln.strip()]
        return head + (f" + uncommitted {', '.join(dirty)}" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> int:
    all_wl = [w.name for w in workloads(None)] + [BIG, START]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="workloads: " + ", ".join(all_wl))
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--workloads", default="all",
                    help="comma list (names below; prefixes like 'put' or 'range' select all "
                         "that start with them); default all")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 s per workload, 100 watch puts, 20,000 big-store keys")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per kvbench workload (default 10, --quick 2)")
    ap.add_argument("--watch-total", type=int, default=None,
                    help="puts in watch-latency (default 300, --quick 100)")
    ap.add_argument("--big-keys", type=int, default=None,
                    help="keys in the big store (default 1,000,000, --quick 20,000)")
    ap.add_argument("--big-timeout", type=float, default=3600,
                    help="give up loading the big store after this many seconds")
    ap.add_argument("--endpoints-mode", choices=["leader", "all"], default="leader",
                    help="endpoints for the workloads without a fixed topology (1-client range, "
                         "txn-put, mixed, watch); put-1c always goes to the leader, *-all to all")
    ap.add_argument("--big-endpoints", choices=["leader", "all"], default="leader",
                    help="endpoints for loading the big store")
    ap.add_argument("--skip-etcd", action="store_true")
    ap.add_argument("--skip-shardkv", action="store_true")
    ap.add_argument("--shardkv-cmd", default=None,
                    help="command that starts one shardkv member, given etcd's flags after it "
                         "(default: python3 -m shardkv.node.cli)")
    ap.add_argument("--keep-dir", action="store_true", help="keep data dirs and logs")
    ap.add_argument("--json-out")
    ap.add_argument("--markdown-out")
    args = ap.parse_args()
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.watch_total = args.watch_total or (100 if args.quick else 300)
    args.big_keys = args.big_keys or (20000 if args.quick else 1_000_000)

    if args.workloads == "all":
        args.selected = all_wl
    else:
        want = [x.strip() for x in args.workloads.split(",") if x.strip()]
        args.selected = [n for n in all_wl if any(n == x or n.startswith(x) for x in want)]
        unknown = [x for x in want if not any(n.startswith(x) for n in all_wl)]
        if unknown:
            ap.error(f"unknown workloads {unknown}; known: {', '.join(all_wl)}")
    wls = [w for w in workloads(args) if w.name in args.selected]

    ensure_tools()

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench_vs_etcd."))
    log(f"data dirs and logs under {tmp}")
    args.txn_kvbench = KVBENCH
    if any(w.op[0] == "txn-put" for w in wls):
        try:
            args.txn_kvbench = kvbench_for_txn(tmp, log)
        except (OSError, subprocess.CalledProcessError) as exc:
            log(f"could not build the txn-put kvbench copy ({exc}); txn-put will fail")
    systems: list[System] = []
    if not args.skip_etcd:
        systems.append(EtcdCluster(tmp / "etcd", args.members))
    if not args.skip_shardkv:
        systems.append(ShardkvCluster(tmp / "shardkv", args.members,
                                      shlex.split(args.shardkv_cmd) if args.shardkv_cmd else None))
    result: dict = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        # the shardkv measured is the working tree: record its commit and uncommitted changes
        "shardkv_tree": git_state(),
        "etcd_version": subprocess.run(["/usr/bin/etcd", "--version"], capture_output=True,
                                       text=True).stdout.splitlines()[0],
        "settings": {"members": args.members, "duration_s": args.duration,
                     "watch_total": args.watch_total, "big_keys": args.big_keys,
                     "endpoints_mode": args.endpoints_mode, "key_size": 8, "value_size": 256,
                     "workloads": args.selected, "kvbench": str(KVBENCH),
                     "kvbench_txn_put": str(args.txn_kvbench)},
    }

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for sysm in systems:
            result[sysm.label] = run_system(sysm, wls, args, log)
    except KeyboardInterrupt:
        log("interrupted: stopping members")
        for sysm in systems:
            sysm.stop()
        return 130
    finally:
        if not args.keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    result["targets"] = targets(result.get("etcd"), result.get("shardkv"))
    md = tables(result)
    print(md)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    if args.markdown_out:
        head = (f"Run {result['date']} — {result['machine']['cpus']} CPUs, loopback, "
                f"{args.members} members each, {result['etcd_version']}; shardkv "
                f"{result['shardkv_tree']}; command: `{result['command']}`\n\n")
        Path(args.markdown_out).write_text(head + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
