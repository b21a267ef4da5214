"""Backup and restore the etcd way: `etcdctl snapshot save` from a shardkv cluster, `etcdctl
snapshot restore --data-dir DIR` (etcd's own restore writes an etcd data dir: member/snap/db is
etcd's bbolt backend), then `shardkv-node --data-dir DIR` serves exactly the backup's keyspace:
same values, versions, create/mod revisions, current and compacted revision, leases (the
backup restored into each data dir of a new 3-member cluster, as etcd documents)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402

pytestmark = pytest.mark.etcdctl


def ok(endpoints: str, *args: str) -> str:
    r = harness.etcdctl(endpoints, *args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def state(endpoints: str) -> dict:
    """Everything a client can see of the keyspace that a restore must keep."""
    out = json.loads(ok(endpoints, "get", "", "--prefix", "-w", "json"))
    history = {}
    for rev in (5, 6, 7, 8, 9):  # older revisions (above the compaction point)
        r = harness.etcdctl(endpoints, "get", "", "--prefix", f"--rev={rev}", "-w", "json")
        history[rev] = (json.loads(r.stdout).get("kvs") if r.returncode == 0
                        else r.stderr.strip().splitlines()[-1])
    compacted = harness.etcdctl(endpoints, "get", "k1", "--rev=3")
    leases = ok(endpoints, "lease", "list")
    return {"revision": out["header"]["revision"], "kvs": out.get("kvs"), "history": history,
            "compacted": compacted.stderr.strip().splitlines()[-1], "leases": leases}


def write_history(eps: str) -> str:
    """Revisions 2-9: overwrites, a compaction at 4, a delete, a leased key, a 2-op txn."""
    ok(eps, "put", "k1", "v1")                      # rev 2
    ok(eps, "put", "k1", "v2")                      # rev 3
    ok(eps, "put", "k2", "x")                       # rev 4
    ok(eps, "compaction", "4")
    ok(eps, "put", "k1", "v3")                      # rev 5
    ok(eps, "del", "k2")                            # rev 6
    lease = ok(eps, "lease", "grant", "600").split()[1]
    ok(eps, "put", "k3", "leased", "--lease", lease)  # rev 7
    ok(eps, "put", "k4", "bin\x01")                 # rev 8
    r = harness.etcdctl(eps, "txn", input="\nput k5 a\nput k6 b\n\n\n")  # rev 9, 2 subs
    assert r.returncode == 0, r.stderr
    return lease


def test_snapshot_save_restore_into_a_new_cluster(tmp_path):
    src = harness.make_cluster(tmp_path / "src", 3)
    try:
        for n in src.nodes:
            n.start()
        harness.wait_ready(src)
        eps = src.endpoints
        lease = write_history(eps)
        before = state(eps)
        backup = tmp_path / "backup.db"
        ok(src.nodes[0].client_url, "snapshot", "save", str(backup))
    finally:
        src.close()
    assert before["revision"] == 9 and "compacted" in before["compacted"]

    # etcd's disaster recovery: the same backup restored into each new member's data dir
    dst = harness.make_cluster(tmp_path / "dst", 3, token="restored-cluster")
    initial = ",".join(f"{n.name}={n.peer_url}" for n in dst.nodes)
    for node in dst.nodes:
        r = harness.etcdctl(node.client_url, "snapshot", "restore", str(backup),
                            "--data-dir", str(node.data_dir), "--name", node.name,
                            "--initial-cluster", initial,
                            "--initial-cluster-token", "restored-cluster",
                            "--initial-advertise-peer-urls", node.peer_url)
        assert r.returncode == 0, r.stderr
        assert (node.data_dir / "member" / "snap" / "db").is_file()
    try:
        for node in dst.nodes:
            node.start()
        harness.wait_ready(dst)
        for node in dst.nodes:
            assert state(node.client_url) == before, node.name
        # a new cluster of its own: writes continue from the backup's revision
        assert len(ok(dst.endpoints, "member", "list").splitlines()) == 3
        out = json.loads(ok(dst.endpoints, "put", "k7", "after", "-w", "json"))
        assert out["header"]["revision"] == 10
        ttl = ok(dst.endpoints, "lease", "timetolive", lease, "--keys")
        assert "granted with TTL(600s)" in ttl and "attached keys([k3])" in ttl
        # a restart opens the imported store as its own (no second import)
        node = dst.nodes[1]
        node.kill()
        node.start()
        harness.wait_ready(dst)
        assert state(node.client_url)["history"] == before["history"]
        got = json.loads(ok(node.client_url, "get", "k7", "-w", "json", "--consistency=s"))
        assert got["kvs"][0]["mod_revision"] == 10
        assert node.log().count("imported etcd backend") == 1
    finally:
        dst.close()


def _backup_of_a_store(tmp_path: Path) -> Path:
    from shardkv.mvcc import etcd_db
    from shardkv.mvcc.kv import PutRequest
    from shardkv.mvcc.store import Store

    with Store(tmp_path / "store") as store:
        store.apply([(1, PutRequest(key=b"a", value=b"1")), (2, PutRequest(key=b"a", value=b"2"))])
        backup = tmp_path / "store.db"
        backup.write_bytes(b"".join(etcd_db.snapshot_chunks(store)))
    return backup


def test_data_dir_etcd_ran_on_is_refused(tmp_path):
    """Only a restored data dir is imported: one etcd ran on may hold WAL entries past its
    backend (here: the restore's snapshot file no longer matches the backend's index)."""
    backup = _backup_of_a_store(tmp_path)
    data = tmp_path / "data"
    r = harness.etcdctl("http://127.0.0.1:1", "snapshot", "restore", str(backup),
                        "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    (snap,) = (data / "member" / "snap").glob("*.snap")
    snap.rename(snap.with_name("0000000000000002-0000000000000063.snap"))
    cp, pp = harness.free_ports(2)
    p = subprocess.run(
        [sys.executable, "-m", "shardkv.node.cli", "--name", "x", "--data-dir", str(data),
         "--listen-client-urls", f"http://127.0.0.1:{cp}",
         "--advertise-client-urls", f"http://127.0.0.1:{cp}",
         "--listen-peer-urls", f"http://127.0.0.1:{pp}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
         "--initial-cluster", f"x=http://127.0.0.1:{pp}"],
        capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "etcdctl snapshot restore" in p.stderr, p.stderr
    assert not (data / "member" / "db").exists()


ETCD = shutil.which("etcd")


@pytest.mark.skipif(ETCD is None, reason="real etcd (the reference) not installed")
def test_backups_cross_between_real_etcd_and_shardkv(tmp_path):
    """Reference check: the same history written to a real etcd 3.4 member; its backup,
    restored with etcdctl, is served by shardkv-node exactly as etcd served it; and shardkv's
    own backup, restored with etcdctl, is served by real etcd exactly as shardkv served it.
    (Real etcd only produces and consumes the backup files, side by side.)"""
    cp, pp = harness.free_ports(2)

    def real_etcd(data: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [ETCD, "--name", "ref", "--data-dir", str(data),
             "--listen-client-urls", f"http://127.0.0.1:{cp}",
             "--advertise-client-urls", f"http://127.0.0.1:{cp}",
             "--listen-peer-urls", f"http://127.0.0.1:{pp}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
             "--initial-cluster", f"ref=http://127.0.0.1:{pp}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def stop(p: subprocess.Popen) -> None:
        p.kill()
        p.wait(timeout=10)

    ref_url = f"http://127.0.0.1:{cp}"
    e = real_etcd(tmp_path / "etcd")
    try:
        harness.wait_until(lambda: harness.etcdctl(ref_url, "get", "x").returncode == 0, 20,
                           0.1, "real etcd")
        write_history(ref_url)
        etcd_state = state(ref_url)
        ok(ref_url, "snapshot", "save", str(tmp_path / "etcd.db"))
    finally:
        stop(e)

    one = harness.make_cluster(tmp_path / "sk", 1)
    node = one.nodes[0]
    r = harness.etcdctl(ref_url, "snapshot", "restore", str(tmp_path / "etcd.db"),
                        "--data-dir", str(node.data_dir), "--name", node.name,
                        "--initial-cluster", f"{node.name}={node.peer_url}",
                        "--initial-advertise-peer-urls", node.peer_url)
    assert r.returncode == 0, r.stderr
    try:
        node.start()
        harness.wait_ready(one)
        assert state(node.client_url) == etcd_state
        ok(node.client_url, "snapshot", "save", str(tmp_path / "shardkv.db"))
    finally:
        one.close()

    r = harness.etcdctl(ref_url, "snapshot", "restore", str(tmp_path / "shardkv.db"),
                        "--data-dir", str(tmp_path / "etcd2"), "--name", "ref",
                        "--initial-cluster", f"ref=http://127.0.0.1:{pp}",
                        "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}")
    assert r.returncode == 0, r.stderr
    e = real_etcd(tmp_path / "etcd2")
    try:
        harness.wait_until(lambda: harness.etcdctl(ref_url, "get", "x").returncode == 0, 20,
                           0.1, "real etcd on shardkv's backup")
        assert state(ref_url) == etcd_state
    finally:
        stop(e)
