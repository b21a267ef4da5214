"""etcdctl against a one-member shardkv-node: the everyday commands, byte for byte."""
import json
import re
import signal
import subprocess

import pytest

from harness import ETCDCTL, etcdctl, wait_until

pytestmark = pytest.mark.etcdctl


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    import harness
    c = harness.make_cluster(tmp_path_factory.mktemp("one"), 1)
    try:
        c.nodes[0].start()
        harness.wait_ready(c)
        yield c
    finally:
        c.close()


def ok(c, *args, input=None) -> str:
    p = etcdctl(c.endpoints, *args, input=input)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout


def test_put_get_del_prefix(one):
    assert ok(one, "put", "a/1", "x") == "OK\n"
    ok(one, "put", "a/2", "y")
    assert ok(one, "get", "a/1") == "a/1\nx\n"
    assert ok(one, "get", "--prefix", "a/") == "a/1\nx\na/2\ny\n"
    assert ok(one, "get", "--prefix", "a/", "--consistency=s") == "a/1\nx\na/2\ny\n"
    assert ok(one, "del", "--prefix", "a/") == "2\n"
    assert ok(one, "get", "--prefix", "a/") == ""


def test_header_fields(one):
    ok(one, "put", "h", "v")
    header = json.loads(ok(one, "get", "h", "-w", "json"))["header"]
    assert header["cluster_id"] and header["member_id"] and header["raft_term"] >= 2
    assert header["revision"] >= 2


def test_txn(one):
    ok(one, "put", "t", "1")
    script = 'value("t") = "1"\n\nput t 2\n\nput t 3\n\n'
    assert ok(one, "txn", input=script) == "SUCCESS\n\nOK\n"
    assert ok(one, "get", "t", "--print-value-only") == "2\n"


def test_lease_attach_and_revoke(one):
    lease = re.match(r"lease ([0-9a-f]+) granted", ok(one, "lease", "grant", "30")).group(1)
    ok(one, "put", "--lease=" + lease, "l", "v")
    assert "remaining" in ok(one, "lease", "timetolive", lease)
    assert ok(one, "lease", "keep-alive", "--once", lease).startswith(f"lease {lease} keepalived")
    ok(one, "lease", "revoke", lease)
    assert ok(one, "get", "l") == ""


def test_lease_expiry_deletes_key(one):
    lease = re.match(r"lease ([0-9a-f]+) granted", ok(one, "lease", "grant", "2")).group(1)
    ok(one, "put", "--lease=" + lease, "exp", "v")
    wait_until(lambda: ok(one, "get", "exp") == "", 15, 0.3, "lease expiry")


def test_watch_sees_put_and_delete(one, tmp_path):
    out = open(tmp_path / "watch.out", "w+")
    proc = subprocess.Popen([ETCDCTL, "--endpoints=" + one.endpoints, "watch", "w"],
                            stdout=out, stderr=subprocess.STDOUT,
                            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    try:
        # the watch may start after our first put: keep writing until it shows up
        def seen() -> bool:
            ok(one, "put", "w", "1")
            return "PUT\nw\n1\n" in (tmp_path / "watch.out").read_text()
        wait_until(seen, 15, 0.3, "watch event")
        ok(one, "del", "w")
        wait_until(lambda: "DELETE\nw\n" in (tmp_path / "watch.out").read_text(), 10, 0.1,
                   "delete event")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        out.close()


def test_lock_runs_command(one):
    assert ok(one, "lock", "mylock", "--", "echo", "inside") == "inside\n"
    assert ok(one, "get", "--prefix", "mylock") == ""


def test_compaction_and_history(one):
    ok(one, "put", "c", "1")
    rev = json.loads(ok(one, "put", "c", "2", "-w", "json"))["header"]["revision"]
    assert ok(one, "get", "c", f"--rev={rev - 1}", "--print-value-only") == "1\n"
    ok(one, "compaction", str(rev))
    p = etcdctl(one.endpoints, "get", "c", f"--rev={rev - 1}")
    assert p.returncode != 0 and "required revision has been compacted" in p.stderr


def test_status_and_snapshot(one, tmp_path):
    status = json.loads(ok(one, "endpoint", "status", "-w", "json"))[0]["Status"]
    assert status["version"].startswith("3.4") and status["dbSize"] > 0
    assert status["leader"] == status["header"]["member_id"]
    path = tmp_path / "snap.db"
    assert ok(one, "snapshot", "save", str(path)) == f"Snapshot saved at {path}\n"
    assert path.stat().st_size > 0


def test_periodic_auto_compaction(cluster_factory):
    c = cluster_factory(1, ["--auto-compaction-mode=periodic", "--auto-compaction-retention=1s"])
    first = json.loads(ok(c, "put", "ac", "1", "-w", "json"))["header"]["revision"]
    ok(c, "put", "ac", "2")

    def compacted() -> bool:
        ok(c, "put", "ac-tick", "x")  # keep revisions moving so a later sample exists
        p = etcdctl(c.endpoints, "get", "ac", f"--rev={first}")
        return p.returncode != 0 and "compacted" in p.stderr
    wait_until(compacted, 20, 0.5, "auto-compaction")
    assert "finished scheduled compaction" in c.nodes[0].log()


def test_metrics_and_health_endpoint(cluster_factory):
    import urllib.request
    from harness import free_ports
    port = free_ports(1)[0]
    c = cluster_factory(1, [f"--listen-metrics-urls=http://127.0.0.1:{port}"])
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "etcd_server_has_leader 1.0" in body
    health = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read()
    assert json.loads(health) == {"health": "true"}
    assert c.nodes[0].alive
