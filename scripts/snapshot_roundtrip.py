"""Backup and restore of a large store with shardkv-admin, end to end, with figures:

    python3 scripts/snapshot_roundtrip.py --keys 50000 --value-size 4096   # ~200 MB of values

1. start a cluster (--members, default 1) on free ports and load --keys keys of --value-size
   random bytes (Txn batches of 128 puts);
2. `shardkv-admin snapshot save` from one member, its stderr on a pseudo-terminal so that the
   progress bar (bytes, rate, from etcd's remaining_bytes) is drawn as an operator sees it;
3. `shardkv-admin snapshot status` (hash, revision, keys, size) unless --no-status;
4. `shardkv-admin snapshot restore` into a new data dir, then `shardkv-node` on it;
5. every key compared (value, create/mod revision, version) between the source cluster and the
   restored member, page by page.
"""
from __future__ import annotations

import argparse
import os
import pty
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "node"))

import harness  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc  # noqa: E402

BATCH = 128  # etcd's default --max-txn-ops
PAGE = 2000  # keys per Range page when comparing
GRPC_OPTIONS = [("grpc.max_receive_message_length", 1 << 30)]


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


@dataclass
class Ran:
    returncode: int
    stdout: str
    peak_rss_mb: float


def admin(*args: str, stderr=None) -> Ran:
    """shardkv-admin in a process of its own; its exit code, stdout and peak RSS (wait4)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-m", "shardkv.admin.cli", *args], stdout=out,
                                stderr=stderr if stderr is not None else subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return Ran(proc.returncode, out.read().decode(), usage.ru_maxrss / 1024)


def load(endpoint: str, keys: int, value_size: int) -> int:
    """Put ``keys`` keys of random values, BATCH per Txn, 8 Txns in flight."""
    sent = 0
    with grpc.insecure_channel(endpoint.split("://")[1]) as ch:
        kv = rpc.KVStub(ch)
        inflight = []
        for start in range(0, keys, BATCH):
            ops = [pb.RequestOp(request_put=pb.PutRequest(
                key=b"roundtrip/%08d" % i, value=os.urandom(value_size)))
                for i in range(start, min(keys, start + BATCH))]
            inflight.append(kv.Txn.future(pb.TxnRequest(success=ops), timeout=120))
            sent += sum(len(o.request_put.value) for o in ops)
            if len(inflight) >= 8:
                inflight.pop(0).result()
        for f in inflight:
            f.result()
    return sent


def save_with_progress(endpoint: str, path: Path) -> tuple[float, str, int, float]:
    """Run snapshot save with stderr on a pty; returns seconds, the last progress line drawn,
    how many times the line was redrawn and the process's peak RSS in MB."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def pump() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)
            sys.stderr.buffer.write(data)
            sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    t = time.monotonic()
    try:
        r = admin("--endpoints", endpoint, "snapshot", "save", str(path), stderr=slave)
    finally:
        os.close(slave)
    took = time.monotonic() - t
    reader.join(5)
    os.close(master)
    if r.returncode:
        raise SystemExit(f"snapshot save failed: {r.returncode}")
    drawn = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    lines = [x.strip() for x in drawn.replace("\n", "\r").split("\r") if x.strip()]
    return took, lines[-1] if lines else "", len(lines), r.peak_rss_mb


def pages(endpoint: str):
    """Every key of the store in key order, PAGE at a time."""
    with grpc.insecure_channel(endpoint.split("://")[1], options=GRPC_OPTIONS) as ch:
        kv = rpc.KVStub(ch)
        key = b"\x00"
        while True:
            resp = kv.Range(pb.RangeRequest(key=key, range_end=b"\x00", limit=PAGE), timeout=60)
            yield from resp.kvs
            if not resp.more:
                return
            key = resp.kvs[-1].key + b"\x00"


def compare(src: str, dst: str) -> int:
    n = 0
    for a, b in zip(pages(src), pages(dst), strict=True):
        if (a.key, a.value, a.create_revision, a.mod_revision, a.version) != \
                (b.key, b.value, b.create_revision, b.mod_revision, b.version):
            raise SystemExit(f"key {a.key!r} differs after restore")
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--value-size", type=int, default=4096)
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--no-status", action="store_true", help="skip snapshot status (pure-Python "
                    "CRC-32C: a few MB/s)")
    ap.add_argument("--dir", help="work dir (default: a temp dir, removed afterwards)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        src = harness.make_cluster(base / "src", args.members,
                                   ["--quota-backend-bytes", str(8 << 30)])
        restored = harness.Cluster()
        try:
            for n in src.nodes:
                n.start()
            harness.wait_ready(src, 60)
            t = time.monotonic()
            sent = load(src.nodes[0].client_url, args.keys, args.value_size)
            took = time.monotonic() - t
            print(f"load:    {args.keys:,} keys, {mb(sent)} of values in {took:.1f} s "
                  f"({mb(sent / took)}/s)")

            backup = base / "backup.db"
            took, last, redraws, rss = save_with_progress(src.nodes[-1].client_url, backup)
            size = backup.stat().st_size
            print(f"save:    {mb(size)} in {took:.1f} s ({mb(size / took)}/s), peak RSS "
                  f"{rss:.0f} MB, progress line drawn {redraws} times, last: {last!r}")

            if not args.no_status:
                t = time.monotonic()
                st = admin("-w", "simple", "snapshot", "status", str(backup))
                print(f"status:  {st.stdout.strip()} (hash, revision, keys, size) in "
                      f"{time.monotonic() - t:.1f} s, peak RSS {st.peak_rss_mb:.0f} MB")
                if harness.ETCDCTL:
                    theirs = harness.etcdctl(src.endpoints, "snapshot", "status", str(backup),
                                             timeout=3600).stdout
                    print(f"         etcdctl snapshot status: {theirs.strip()} "
                          f"({'the same' if theirs == st.stdout else 'DIFFERENT'})")

            cp, pp = harness.free_ports(2)
            peer, data = f"http://127.0.0.1:{pp}", base / "restored"
            t = time.monotonic()
            r = admin("snapshot", "restore", str(backup), "--data-dir", str(data), "--name", "r0",
                      "--initial-cluster", f"r0={peer}", "--initial-advertise-peer-urls", peer)
            if r.returncode:
                raise SystemExit(f"restore failed: {r.returncode}")
            print(f"restore: {time.monotonic() - t:.1f} s, peak RSS {r.peak_rss_mb:.0f} MB")

            node = harness.Node("r0", cp, pp, data, base / "r0.log", [
                "--name", "r0", "--data-dir", str(data),
                "--listen-client-urls", f"http://127.0.0.1:{cp}",
                "--advertise-client-urls", f"http://127.0.0.1:{cp}",
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"r0={peer}", "--quota-backend-bytes", str(8 << 30)])
            restored.nodes.append(node)
            t = time.monotonic()
            node.start()
            harness.wait_ready(restored, 600)
            print(f"start:   the restored member serves after {time.monotonic() - t:.1f} s "
                  "(imports the backend on its first start)")

            t = time.monotonic()
            n = compare(src.nodes[0].client_url, node.client_url)
            print(f"compare: {n:,} keys identical (value, create/mod revision, version) in "
                  f"{time.monotonic() - t:.1f} s")
        finally:
            restored.close()
            src.close()



if __name__ == "__main__":
    main()
