"""shardkv-admin's etcdctl commands against a multi-process 3-member cluster, each output
compared with what etcdctl prints against the same cluster: the same table, the same simple
lines, the same JSON keys and value types (-w json), the same exit codes and error lines.

One module-scoped cluster; shardkv-admin runs in-process (``shardkv.admin.cli.main``) except
where the process itself is under test (completion, the exit code of a real process)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402

from shardkv.admin import cli, snapshot as admin_snapshot  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc  # noqa: E402

pytestmark = pytest.mark.etcdctl


@dataclass
class Run:
    rc: int
    out: str
    err: str


def admin(*args: str) -> Run:
    """shardkv-admin in this process: its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(["--dial-timeout", "2s", "--command-timeout", "10s", *args])
            rc = 0
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return Run(rc, out.getvalue(), err.getvalue())


def ctl(endpoints: str, *args: str) -> Run:
    """etcdctl; a dead endpoint costs it the whole command timeout, hence a short one."""
    r = harness.etcdctl(endpoints, "--command-timeout=3s", *args)
    return Run(r.returncode, r.stdout, r.stderr)


def last_line(text: str) -> str:
    """etcdctl logs retries as JSON lines on stderr before its error line."""
    return text.strip().splitlines()[-1]


def shape(value):
    """A JSON value's structure: every scalar replaced by its type (lists in any order)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted((shape(v) for v in value), key=repr)
    return type(value).__name__


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = harness.make_cluster(tmp_path_factory.mktemp("admin"), 3)
    try:
        for n in c.nodes:
            n.start()
        harness.wait_ready(c)
        yield c
    finally:
        c.close()


def put(endpoint: str, items: dict[bytes, bytes]) -> None:
    with grpc.insecure_channel(endpoint.split("://")[1]) as ch:
        kv = rpc.KVStub(ch)
        for k, v in items.items():
            kv.Put(pb.PutRequest(key=k, value=v), timeout=10)


def test_member_list_as_etcdctl_prints_it(cluster):
    eps = cluster.endpoints
    for fmt in ("table", "simple"):
        ours, theirs = admin("--endpoints", eps, "-w", fmt, "member", "list"), \
            ctl(eps, "-w", fmt, "member", "list")
        assert ours.rc == theirs.rc == 0, ours.err
        assert ours.out == theirs.out
    ours = json.loads(admin("--endpoints", eps, "member", "list", "-w", "json").out)
    theirs = json.loads(ctl(eps, "-w", "json", "member", "list").out)
    assert shape(ours) == shape(theirs)
    assert ours["members"] == theirs["members"]
    assert ours["header"]["cluster_id"] == theirs["header"]["cluster_id"]


def test_endpoints_from_the_environment(cluster, monkeypatch):
    """SHARDKV_ENDPOINTS, else etcdctl's ETCDCTL_ENDPOINTS; --endpoints over both."""
    dead = f"127.0.0.1:{harness.free_ports(1)[0]}"
    monkeypatch.setenv("ETCDCTL_ENDPOINTS", cluster.endpoints)
    assert admin("member", "list").out.count("started") == 3
    monkeypatch.setenv("SHARDKV_ENDPOINTS", dead)
    assert admin("member", "list").err == "Error: context deadline exceeded\n"
    assert admin("--endpoints", cluster.nodes[1].client_url, "member", "list").rc == 0


def test_status_and_health_as_etcdctl_prints_them(cluster):
    eps = cluster.endpoints
    ours = admin("--endpoints", eps, "status")
    theirs = ctl(eps, "-w", "table", "endpoint", "status")
    assert ours.rc == theirs.rc == 0
    assert ours.out.splitlines()[:3] == theirs.out.splitlines()[:3]  # border, titles, border
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in ours.out.splitlines()[3:-1]]
    assert [r[0] for r in rows] == eps.split(",")
    assert sum(r[4] == "true" for r in rows) == 1  # one leader
    ours_j = json.loads(admin("--endpoints", eps, "-w", "json", "status").out)
    theirs_j = json.loads(ctl(eps, "-w", "json", "endpoint", "status").out)
    assert shape(ours_j) == shape(theirs_j)
    assert [s["Status"]["header"]["member_id"] for s in ours_j] == \
        [s["Status"]["header"]["member_id"] for s in theirs_j]

    ours = admin("--endpoints", eps, "-w", "json", "health")
    theirs = ctl(eps, "-w", "json", "endpoint", "health")
    assert ours.rc == theirs.rc == 0
    assert shape(json.loads(ours.out)) == shape(json.loads(theirs.out))
    assert all(h["health"] for h in json.loads(ours.out))
    cl = admin("--endpoints", cluster.nodes[0].client_url, "-w", "json", "health", "--cluster")
    assert sorted(h["endpoint"] for h in json.loads(cl.out)) == sorted(eps.split(","))
    simple = admin("--endpoints", eps, "-w", "simple", "health")
    assert simple.out == "" and simple.err.count("is healthy: successfully committed") == 3


def test_failures_exit_as_etcdctl_does(cluster):
    """A dead endpoint, a server error, a bad argument: etcdctl's exit code, its error line."""
    dead = f"http://127.0.0.1:{harness.free_ports(1)[0]}"
    ours, theirs = admin("--endpoints", dead, "member", "list"), ctl(dead, "member", "list")
    assert ours.rc == theirs.rc == 1
    assert ours.err == last_line(theirs.err) + "\n" == "Error: context deadline exceeded\n"

    eps = cluster.endpoints
    ours = admin("--endpoints", f"{eps},{dead}", "-w", "json", "health")
    theirs = ctl(f"{eps},{dead}", "-w", "json", "endpoint", "health")
    assert ours.rc == theirs.rc == 1
    assert ours.err == last_line(theirs.err) + "\n" == "Error: unhealthy cluster\n"
    bad = [h for h in json.loads(ours.out) if not h["health"]]
    assert [(h["endpoint"], h["error"]) for h in bad] == [(dead, "context deadline exceeded")]

    ours = admin("--endpoints", f"{eps},{dead}", "status")
    theirs = ctl(f"{eps},{dead}", "endpoint", "status")
    assert ours.rc == theirs.rc == 1
    assert ours.err.startswith(f"Failed to get the status of endpoint {dead} (")

    for args in (["member", "remove", "1234"], ["member", "update", "1234", "--peer-urls",
                                                   "http://127.0.0.1:1"],
                 ["member", "remove", "zz"], ["move-leader", "zz"], ["compaction", "x"]):
        theirs = ctl(eps, *args)
        mine = ["compact", *args[1:]] if args[0] == "compaction" else args
        ours = admin("--endpoints", eps, *mine)
        assert (ours.rc, ours.err) == (theirs.rc, last_line(theirs.err) + "\n"), args
        assert ours.rc != 0 and ours.out == ""


def test_member_add_update_promote_remove(cluster):
    eps = cluster.endpoints
    p1, p2, p3 = (f"http://127.0.0.1:{p}" for p in harness.free_ports(3))
    added = admin("--endpoints", eps, "-w", "json", "member", "add", "x1", "--learner",
                  "--peer-urls", p1)
    assert added.rc == 0, added.err
    ours = json.loads(added.out)
    new_id = ours["member"]["ID"]
    assert ours["member"] == {"ID": new_id, "peerURLs": [p1], "isLearner": True}

    promote = admin("--endpoints", eps, "member", "promote", f"{new_id:x}")
    theirs = ctl(eps, "member", "promote", f"{new_id:x}")  # an unstarted learner is not in sync
    assert promote.rc == theirs.rc == 1
    assert promote.err == last_line(theirs.err) + "\n"
    assert "can only promote a learner member which is in sync with leader" in promote.err

    updated = admin("--endpoints", eps, "-w", "json", "member", "update", f"{new_id:x}",
                    "--peer-urls", p2)
    theirs_updated = ctl(eps, "-w", "json", "member", "update", f"{new_id:x}", "--peer-urls", p2)
    assert updated.rc == theirs_updated.rc == 0
    assert shape(json.loads(updated.out)) == shape(json.loads(theirs_updated.out))
    assert admin("--endpoints", eps, "member", "update", f"{new_id:x}", "--peer-urls",
                 p2).out == f"Member {new_id:16x} updated in cluster " \
        f"{ours['header']['cluster_id']:16x}\n"
    removed = admin("--endpoints", eps, "member", "remove", f"{new_id:x}")
    assert removed.out == f"Member {new_id:16x} removed from cluster " \
        f"{ours['header']['cluster_id']:16x}\n"

    # etcdctl adds one the same way: the same JSON keys and types
    theirs = json.loads(ctl(eps, "-w", "json", "member", "add", "x2", "--learner",
                            "--peer-urls", p3).out)
    assert shape(theirs) == shape(ours)
    assert admin("--endpoints", eps, "member", "remove", f"{theirs['member']['ID']:x}").rc == 0
    simple = admin("--endpoints", eps, "member", "add", "x3", "--peer-urls", p3, "--learner")
    theirs_id = int(simple.out.split()[1], 16)
    lines = simple.out.splitlines()
    assert lines[1] == "" and lines[2] == 'ETCD_NAME="x3"'
    initial = lines[3].removeprefix('ETCD_INITIAL_CLUSTER="').removesuffix('"').split(",")
    assert sorted(initial) == sorted([f"x3={p3}", *(f"{n.name}={n.peer_url}"
                                                     for n in cluster.nodes)])
    assert lines[4:] == [f'ETCD_INITIAL_ADVERTISE_PEER_URLS="{p3}"',
                         'ETCD_INITIAL_CLUSTER_STATE="existing"']
    assert admin("--endpoints", eps, "member", "remove", f"{theirs_id:x}").rc == 0
    members = json.loads(admin("--endpoints", eps, "-w", "json", "member", "list").out)
    assert len(members["members"]) == 3


def test_alarm_defrag_compact_move_leader(cluster):
    eps = cluster.endpoints
    ours, theirs = admin("--endpoints", eps, "-w", "json", "alarm", "list"), \
        ctl(eps, "-w", "json", "alarm", "list")
    assert ours.rc == theirs.rc == 0 and shape(json.loads(ours.out)) == \
        shape(json.loads(theirs.out))
    ours, theirs = admin("--endpoints", eps, "-w", "json", "alarm", "disarm"), \
        ctl(eps, "-w", "json", "alarm", "disarm")
    assert ours.out == theirs.out == "{}\n"
    assert admin("--endpoints", eps, "-w", "simple", "alarm", "list").out == \
        ctl(eps, "alarm", "list").out == ""

    ours, theirs = admin("--endpoints", eps, "defrag"), ctl(eps, "defrag")
    assert ours.rc == theirs.rc == 0 and ours.out == theirs.out

    put(cluster.nodes[0].client_url, {b"c1": b"1", b"c2": b"2"})
    rev = json.loads(ctl(eps, "-w", "json", "get", "c1").out)["header"]["revision"]
    assert admin("--endpoints", eps, "compact", str(rev - 1)).out == \
        f"compacted revision {rev - 1}\n"
    assert admin("--endpoints", eps, "compact", str(rev), "--physical").out == \
        f"compacted revision {rev}\n"
    ours, theirs = admin("--endpoints", eps, "compact", str(rev)), ctl(eps, "compaction", str(rev))
    assert ours.rc == theirs.rc == 1
    assert ours.err == last_line(theirs.err) + "\n" == \
        "Error: etcdserver: mvcc: required revision has been compacted\n"

    status = json.loads(admin("--endpoints", eps, "-w", "json", "status").out)
    leader = status[0]["Status"]["leader"]
    follower = next(s["Status"]["header"]["member_id"] for s in status
                    if s["Status"]["header"]["member_id"] != leader)
    moved = admin("--endpoints", eps, "move-leader", f"{follower:x}")
    assert moved.rc == 0, moved.err
    assert moved.out == f"Leadership transferred from {leader:x} to {follower:x}\n"
    harness.wait_until(lambda: json.loads(admin("--endpoints", eps, "-w", "json", "status")
                                          .out)[0]["Status"]["leader"] == follower,
                       10, 0.2, "the new leader")
    ours, theirs = admin("--endpoints", eps, "move-leader", "1"), ctl(eps, "move-leader", "1")
    assert (ours.rc, ours.err) == (theirs.rc, last_line(theirs.err) + "\n")
    assert ours.err == "Error: etcdserver: bad leader transferee\n"
    harness.wait_ready(cluster)


def test_snapshot_streams_remaining_bytes(cluster):
    """etcd's remaining_bytes: the first chunk tells the size, each chunk counts down to 0, the
    sha256 trailer comes last with 0."""
    put(cluster.nodes[0].client_url, {f"big{i}".encode(): os.urandom(1 << 20) for i in range(3)})
    with grpc.insecure_channel(cluster.nodes[1].client_url.split("://")[1], options=[
            ("grpc.max_receive_message_length", 1 << 26)]) as ch:
        chunks = [(len(r.blob), r.remaining_bytes) for r in
                  rpc.MaintenanceStub(ch).Snapshot(pb.SnapshotRequest(), timeout=30)]
    assert len(chunks) >= 4 and chunks[-1] == (32, 0) and chunks[-2][1] == 0
    total = chunks[0][0] + chunks[0][1]
    assert sum(n for n, _ in chunks[:-1]) == total
    left = total
    for n, remaining in chunks[:-1]:
        left -= n
        assert remaining == left


def test_snapshot_progress_line():
    tty = io.StringIO()
    bar = admin_snapshot.Progress(tty, enabled=True)
    bar.update(500_000, 2_000_000)
    bar.update(2_000_000, 2_000_000, final=True)
    assert "25% 500 kB / 2.0 MB" in tty.getvalue() and "100% 2.0 MB / 2.0 MB" in tty.getvalue()
    assert "/s" in tty.getvalue() and tty.getvalue().endswith("\n")
    quiet = io.StringIO()
    admin_snapshot.Progress(quiet, enabled=False).update(1, 2, final=True)
    assert quiet.getvalue() == ""


def everything(ch: grpc.Channel) -> pb.RangeResponse:
    return rpc.KVStub(ch).Range(pb.RangeRequest(key=b"\x00", range_end=b"\x00"), timeout=10)


def start_restored(tmp_path: Path, data: Path, name: str, client_port: int, peer_port: int,
                   token: str) -> harness.Cluster:
    """shardkv-node on a restored data dir, with the flags it was restored with; started."""
    peer = f"http://127.0.0.1:{peer_port}"
    node = harness.Node(name, client_port, peer_port, data, tmp_path / f"{name}.log", [
        "--name", name, "--data-dir", str(data),
        "--listen-client-urls", f"http://127.0.0.1:{client_port}",
        "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{name}={peer}", "--initial-cluster-token", token])
    c = harness.Cluster([node])
    try:
        node.start()
        harness.wait_ready(c)
    except BaseException:
        c.close()
        raise
    return c


def test_snapshot_save_status_restore_serves_every_key(cluster, tmp_path):
    keys = {f"snap/{i:04d}".encode(): f"value-{i}".encode() * 7 for i in range(300)}
    keys[b"bin\x00\xff"] = b"\x00\x01\xfe"
    put(cluster.nodes[0].client_url, keys)
    ep = cluster.nodes[2].client_url
    with grpc.insecure_channel(ep.split("://")[1]) as ch:
        # a linearizable read: the member has applied every put before it is backed up
        want = everything(ch)
    backup = tmp_path / "backup.db"
    multi = admin("--endpoints", cluster.endpoints, "snapshot", "save", str(backup))
    assert multi.rc == 5 and multi.err.startswith(
        "Error: snapshot must be requested to one selected node, not multiple [")
    saved = admin("--endpoints", ep, "snapshot", "save", str(backup))
    assert saved.rc == 0, saved.err
    assert saved.out == f"Snapshot saved at {backup}\n" and saved.err == ""  # no tty: quiet
    assert not Path(str(backup) + ".part").exists()

    ours = admin("-w", "simple", "snapshot", "status", str(backup))
    theirs = ctl(ep, "snapshot", "status", str(backup))
    assert ours.rc == theirs.rc == 0 and ours.out == theirs.out
    assert admin("snapshot", "status", str(backup)).out == \
        ctl(ep, "-w", "table", "snapshot", "status", str(backup)).out
    assert json.loads(admin("-w", "json", "snapshot", "status", str(backup)).out) == \
        json.loads(ctl(ep, "-w", "json", "snapshot", "status", str(backup)).out)
    # etcdctl's own save of the same member reads the same
    theirs_file = tmp_path / "theirs.db"
    assert ctl(ep, "snapshot", "save", str(theirs_file)).rc == 0
    assert admin("-w", "simple", "snapshot", "status", str(theirs_file)).out == \
        ctl(ep, "snapshot", "status", str(theirs_file)).out

    cp, pp = harness.free_ports(2)
    peer = f"http://127.0.0.1:{pp}"
    restore_args = ["snapshot", "restore", str(backup), "--name", "r0", "--initial-cluster",
                    f"r0={peer}", "--initial-cluster-token", "restored",
                    "--initial-advertise-peer-urls", peer]
    data = tmp_path / "r0.data"
    restored = admin(*restore_args, "--data-dir", str(data))
    assert restored.rc == 0, restored.err
    again = admin(*restore_args, "--data-dir", str(data))
    assert (again.rc, again.err) == (1, f'Error: data-dir "{data}" exists\n')
    wrong = admin(*restore_args[:4], "rX", *restore_args[5:], "--data-dir", str(tmp_path / "x"))
    assert wrong.rc == 128 and "couldn't find local name \"rX\"" in wrong.err
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(backup.read_bytes()[:-1] + b"\x00")
    bad = admin("snapshot", "restore", str(damaged), "--data-dir", str(tmp_path / "y"))
    assert bad.rc == 1 and bad.err.startswith("Error: expected sha256 [")
    assert not (tmp_path / "y").exists() and not (tmp_path / "y.restoring").exists()

    restored_cluster = start_restored(tmp_path, data, "r0", cp, pp, "restored")
    node = restored_cluster.nodes[0]
    try:
        with grpc.insecure_channel(node.client_url.split("://")[1]) as ch:
            got = everything(ch)
        def records(resp):
            return {kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version)
                    for kv in resp.kvs}
        served = records(got)
        assert served == records(want) and got.header.revision == want.header.revision
        assert all(served[k][0] == v for k, v in keys.items())
        listed = json.loads(admin("--endpoints", node.client_url, "-w", "json", "member",
                                  "list").out)
        assert [(m["name"], m["peerURLs"]) for m in listed["members"]] == [("r0", [peer])]
    finally:
        restored_cluster.close()


def test_cluster_status_and_a_dead_member(cluster, tmp_path):
    """`cluster status` over a topology file naming the module's members (their pids recorded
    as `cluster up` records them); a killed member makes it, and health, exit non-zero."""
    members = "".join(f'\n[[member]]\nname = "{n.name}"\nclient_url = "{n.client_url}"\n'
                      f'peer_url = "{n.peer_url}"\n' for n in cluster.nodes)
    root = tmp_path / "topo"
    root.mkdir()
    (root / "pids.json").write_text(json.dumps({n.name: n.proc.pid for n in cluster.nodes}))
    config = tmp_path / "topo.toml"
    config.write_text(f'[cluster]\ntoken = "test-cluster"\ndata_root = "{root}"\n{members}')

    up = admin("-w", "json", "cluster", "status", str(config))
    assert up.rc == 0, up.err
    states = json.loads(up.out)
    assert [s["name"] for s in states] == ["n0", "n1", "n2"]
    assert all(s["alive"] and s["health"] and s["raftIndex"] > 0 for s in states)
    assert sum(s["isLeader"] for s in states) == 1

    victim = cluster.nodes[2]
    victim.kill()
    try:
        down = admin("-w", "simple", "cluster", "status", str(config))
        assert down.rc == 1 and down.err == "Error: members down: n2\n"
        row = next(line.split(", ") for line in down.out.splitlines() if line.startswith("n2,"))
        assert (row[2], row[4]) == ("false", "false")  # alive, health
        ours = admin("--endpoints", cluster.endpoints, "health")
        theirs = ctl(cluster.endpoints, "endpoint", "health")
        assert ours.rc == theirs.rc == 1 and ours.err == "Error: unhealthy cluster\n"
    finally:
        victim.start()
        harness.wait_ready(cluster)


def test_process_exit_code_and_shell_completion():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    dead = f"127.0.0.1:{harness.free_ports(1)[0]}"
    r = subprocess.run([sys.executable, "-m", "shardkv.admin.cli", "--endpoints", dead,
                        "--dial-timeout", "1s", "member", "list"], capture_output=True,
                       text=True, env=env, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "Error: context deadline exceeded\n")
    r = subprocess.run([sys.executable, "-m", "shardkv.admin.cli"], capture_output=True,
                       text=True, timeout=30, env={
                           **env, "_SHARDKV_ADMIN_COMPLETE": "bash_complete",
                           "COMP_WORDS": "shardkv-admin snapshot re", "COMP_CWORD": "2"})
    assert r.returncode == 0 and r.stdout.split() == ["plain,restore"]
    r = subprocess.run([sys.executable, "-m", "shardkv.admin.cli"], capture_output=True,
                       text=True, timeout=30,
                       env={**env, "_SHARDKV_ADMIN_COMPLETE": "bash_source"})
    assert r.returncode == 0 and "_SHARDKV_ADMIN_COMPLETE=bash_complete" in r.stdout


ETCD_SNAPSHOT = Path(__file__).parent / "data" / "etcd-3.4.23-snapshot.db"


def test_restore_a_snapshot_real_etcd_took(tmp_path):
    """A backup `etcdctl snapshot save` took from a real etcd 3.4.23 (checked in: puts, an
    overwrite, a compaction at 3, a delete, a leased key, UTF-8), restored by shardkv-admin:
    the same status as etcdctl reads, and shardkv-node serves etcd's keyspace."""
    ours = admin("-w", "json", "snapshot", "status", str(ETCD_SNAPSHOT))
    theirs = ctl("127.0.0.1:1", "-w", "json", "snapshot", "status", str(ETCD_SNAPSHOT))
    assert ours.rc == theirs.rc == 0 and json.loads(ours.out) == json.loads(theirs.out)
    cp, pp = harness.free_ports(2)
    data = tmp_path / "from-etcd"
    r = admin("snapshot", "restore", str(ETCD_SNAPSHOT), "--data-dir", str(data), "--name", "e",
              "--initial-cluster", f"e=http://127.0.0.1:{pp}", "--initial-advertise-peer-urls",
              f"http://127.0.0.1:{pp}", "--initial-cluster-token", "t")
    assert r.rc == 0, r.err
    c = start_restored(tmp_path, data, "e", cp, pp, "t")
    try:
        with grpc.insecure_channel(c.nodes[0].client_url.split("://")[1]) as ch:
            got = everything(ch)
        assert got.header.revision == 8
        assert [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)
                for kv in got.kvs] == [
            (b"a", b"2", 2, 3, 2), ("bin/ü".encode(), "ü<&>".encode(), 8, 8, 1),
            (b"c", b"3", 5, 5, 1), (b"leased", b"v", 7, 7, 1)]
        assert got.kvs[3].lease == 8645400820080321291
        compacted = ctl(c.endpoints, "get", "a", "--rev=2")
        assert last_line(compacted.err) == \
            "Error: etcdserver: mvcc: required revision has been compacted"
    finally:
        c.close()
