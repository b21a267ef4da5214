"""Two attacks on a member's watch path (issue 14, section 4), with the figures that matter.

    python3 scripts/attack_watch.py                       # this checkout, both attacks
    python3 scripts/attack_watch.py --code /work/base     # the same against older code
    python3 scripts/attack_watch.py --attacks slow --slow-puts 16

``slow``: one Watch stream carrying ``--slow-watchers`` watches on one key whose client reads
nothing (not even from its socket: tests/node/raw_watch_client.py), while another client puts
``--slow-puts`` values of ``--value-bytes`` on that key; with ``--drain`` the client then reads
and checks that every watcher got every event in order.
``history``: a store with ``--history-revs`` revisions, then ``--history-watchers`` watches from
revision 1 on one stream whose client reads everything (checked: every event, in order, once).

For each: the attacked member's start and peak RSS (psutil, every 50 ms), the longest gap
between answers to a serial writer and to a serial (serializable) reader on the attacked member
meanwhile (the reader's is its event loop's longest stall, as a client sees it), and leader
changes (raft term seen before and after, on every member). Starts a 3-member cluster on free ports
(members run ``python3 -m shardkv.node.cli`` from ``--code``) and kills it at the end.
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "node"))
from harness import make_cluster, wait_until  # noqa: E402
from raw_watch_client import RawWatchClient  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc  # noqa: E402

MB = 1024 * 1024


class Sampler(threading.Thread):
    """Peak RSS of one process, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.start_rss = self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return


class SerialClient(threading.Thread):
    """One request at a time on one member, each waiting for the previous answer; records the
    longest gap between answers. ``put``: a write (replication and the disk included);
    ``get``: a serializable read, served by the member's event loop alone, so its longest gap
    is the loop's longest stall as a client sees it."""

    def __init__(self, endpoint: str, kind: str, timeout: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.kv = rpc.KVStub(grpc.insecure_channel(endpoint))
        self.kind = kind
        self.timeout = timeout
        self.stop = threading.Event()
        self.longest_gap = 0.0
        self.answers = 0
        self.failures = 0

    def run(self) -> None:
        last = time.monotonic()
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                if self.kind == "put":
                    self.kv.Put(pb.PutRequest(key=b"serial", value=b"%d" % i),
                                timeout=self.timeout)
                else:
                    self.kv.Range(pb.RangeRequest(key=b"serial", serializable=True),
                                  timeout=self.timeout)
                self.answers += 1
            except grpc.RpcError:
                self.failures += 1
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now


class SerialClients:
    """A serial writer and a serial reader on the attacked member."""

    def __init__(self, endpoint: str) -> None:
        self.clients = [SerialClient(endpoint, "put"), SerialClient(endpoint, "get")]

    def start(self) -> None:
        for c in self.clients:
            c.start()

    def finish(self) -> dict:
        for c in self.clients:
            c.stop.set()
        for c in self.clients:
            c.join(15)
        out = {}
        for c in self.clients:
            out[f"serial_{c.kind}_longest_gap_s"] = c.longest_gap
            out[f"serial_{c.kind}_failures"] = c.failures
        return out


def terms(endpoints: list[str]) -> list[int]:
    out = []
    for ep in endpoints:
        with grpc.insecure_channel(ep) as ch:
            try:
                out.append(rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=5).raftTerm)
            except grpc.RpcError:
                out.append(-1)
    return out


def leader_endpoint(endpoints: list[str]) -> str:
    for ep in endpoints:
        with grpc.insecure_channel(ep) as ch:
            st = rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=5)
            if st.leader == st.header.member_id:
                return ep
    raise RuntimeError("no leader")


def open_watches(endpoint: str, creates: list[pb.WatchCreateRequest]) -> RawWatchClient:
    """One Watch call carrying ``creates`` from a client that reads nothing until asked."""
    host, port = endpoint.rsplit(":", 1)
    client = RawWatchClient(host, int(port), timeout=30)
    client.send(*(pb.WatchRequest(create_request=c) for c in creates))
    return client


def attack_slow(endpoint: str, pid: int, args: argparse.Namespace) -> dict:
    sampler, serial = Sampler(pid), SerialClients(endpoint)
    sampler.start()
    creates = [pb.WatchCreateRequest(key=b"slow/k") for _ in range(args.slow_watchers)]
    client = open_watches(endpoint, creates)
    time.sleep(1.0)  # let the creates arrive
    serial.start()
    kv = rpc.KVStub(grpc.insecure_channel(endpoint))
    value = b"x" * args.value_bytes
    slowest, failed = 0.0, 0
    for _ in range(args.slow_puts):
        t = time.monotonic()
        try:
            kv.Put(pb.PutRequest(key=b"slow/k", value=value), timeout=10)
        except grpc.RpcError:
            failed += 1
        slowest = max(slowest, time.monotonic() - t)
    time.sleep(args.settle)
    result = {"peak_rss_mb": (sampler.peak - sampler.start_rss) / MB,
              "start_rss_mb": sampler.start_rss / MB,
              "slowest_put_s": slowest, "failed_puts": failed}
    result.update(serial.finish())
    if args.drain:
        t = time.monotonic()
        ok = drain_and_check(client, args.slow_watchers, args.slow_puts - failed,
                             args.drain_timeout)
        result.update(drained_in_order=ok, drain_s=time.monotonic() - t,
                      peak_rss_with_drain_mb=(sampler.peak - sampler.start_rss) / MB)
    sampler.stop.set()
    client.close()
    return result


def drain_and_check(client: RawWatchClient, watchers: int, per_watcher: int,
                    timeout: float) -> bool:
    """Read until every watcher has ``per_watcher`` events; each watcher's revisions must
    increase strictly (in order, no duplicates)."""
    got: dict[int, list[int]] = {}
    done: queue.Queue = queue.Queue()

    def reader():
        try:
            complete = 0
            for resp in client.responses():
                if resp.created:
                    got.setdefault(resp.watch_id, [])
                    continue
                revs = got.setdefault(resp.watch_id, [])
                before = len(revs) >= per_watcher
                revs.extend(e.kv.mod_revision for e in resp.events)
                if not before and len(revs) >= per_watcher:
                    complete += 1
                    if complete == watchers:
                        break
        except OSError:
            pass
        done.put(True)

    threading.Thread(target=reader, daemon=True).start()
    try:
        done.get(timeout=timeout)
    except queue.Empty:
        return False
    return len(got) == watchers and all(
        len(r) == per_watcher and r == sorted(set(r)) for r in got.values())


def attack_history(endpoint: str, pid: int, args: argparse.Namespace) -> dict:
    kv = rpc.KVStub(grpc.insecure_channel(endpoint))
    value = b"h" * args.history_value_bytes
    for i in range(args.history_revs):
        kv.Put(pb.PutRequest(key=b"hist/%d" % (i % 10), value=value), timeout=10)
    head = kv.Range(pb.RangeRequest(key=b"hist/0"), timeout=5).header.revision
    history = args.history_revs  # events under hist/ from revision 1: one per history put
    sampler, serial = Sampler(pid), SerialClients(endpoint)
    sampler.start()
    serial.start()
    t = time.monotonic()
    creates = [pb.WatchCreateRequest(key=b"hist/", range_end=b"hist0", start_revision=1)
               for _ in range(args.history_watchers)]
    client = open_watches(endpoint, creates)
    ok = drain_and_check(client, args.history_watchers, history, args.drain_timeout)
    took = time.monotonic() - t
    gaps = serial.finish()
    sampler.stop.set()
    client.close()
    return {"peak_rss_mb": (sampler.peak - sampler.start_rss) / MB,
            "start_rss_mb": sampler.start_rss / MB, "head_revision": head,
            "all_history_in_order": ok, "catch_up_s": took, **gaps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", default=str(REPO), help="checkout the members run from")
    ap.add_argument("--attacks", default="slow,history")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--slow-watchers", type=int, default=2000)
    ap.add_argument("--slow-puts", type=int, default=16)
    ap.add_argument("--value-bytes", type=int, default=100 * 1024)
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds to keep sampling after the last put")
    ap.add_argument("--drain", action="store_true",
                    help="slow: then read the stream and check every event arrived in order")
    ap.add_argument("--history-revs", type=int, default=2000)
    ap.add_argument("--history-value-bytes", type=int, default=1000)
    ap.add_argument("--history-watchers", type=int, default=500)
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = args.code  # the members import this checkout's shardkv
    os.chdir(args.code)
    with tempfile.TemporaryDirectory(prefix="attack-watch-") as tmp:
        cluster = make_cluster(Path(tmp), args.members)
        try:
            for n in cluster.nodes:
                n.start()
            endpoints = [f"127.0.0.1:{n.client_port}" for n in cluster.nodes]
            wait_until(lambda: _has_leader(endpoints), 30, 0.2, "a leader")
            target = leader_endpoint(endpoints)
            node = next(n for n in cluster.nodes if target.endswith(f":{n.client_port}"))
            print(f"code {args.code}; attacked member {node.name} (leader) at {target}")
            for name in args.attacks.split(","):
                before = terms(endpoints)
                fn = {"slow": attack_slow, "history": attack_history}[name]
                result = fn(target, node.proc.pid, args)
                after = terms(endpoints)
                result["leader_changes"] = max(after) - max(before)
                result["members_alive"] = sum(n.alive for n in cluster.nodes)
                print(name, " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in result.items()), flush=True)
        finally:
            cluster.close()


def _has_leader(endpoints: list[str]) -> bool:
    try:
        leader_endpoint(endpoints)
        return True
    except (RuntimeError, grpc.RpcError):
        return False


if __name__ == "__main__":
    main()
