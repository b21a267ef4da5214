"""Walk through the etcdctl commands of the seed etcd guide (/work/shared/seed/000_23b8bc44b78af1c6.txt,
sections 2.3-2.9, 3.4, 3.5, 3.7/3.8, 4.1-4.3) against a 3-member shardkv cluster, in order, and
compare the transcript with what a real etcd 3.4.23 cluster printed for the same walk.

The expected transcript was produced by running this module's ``walkthrough`` against three real
etcd 3.4.23 members in /tmp (``python3 tests/node/test_seed_document.py URL1,URL2,URL3``). Only
what varies between runs is normalised: lease ids, member/cluster ids, endpoints, latencies,
remaining TTL seconds, and snapshot file sizes/timestamps in etcdctl's log lines (which are
dropped: the stderr logs of `snapshot save/restore` are zap JSON with timestamps).
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402

pytestmark = pytest.mark.etcdctl


class Walk:
    def __init__(self, endpoints: list[str], workdir: Path) -> None:
        self.eps = endpoints
        self.all = ",".join(endpoints)
        self.work = workdir
        self.lines: list[str] = []
        self.names: dict[str, str] = {}  # raw id -> placeholder

    # --------------------------------------------------------------- normalising
    def _name(self, raw: str, kind: str) -> str:
        if raw not in self.names:
            n = sum(1 for v in self.names.values() if v.startswith(f"<{kind}"))
            self.names[raw] = f"<{kind}{n}>"
        return self.names[raw]

    def norm(self, text: str) -> str:
        for i, ep in enumerate(self.eps):
            text = text.replace(ep, f"<EP{i}>")
        text = re.sub(r"took = [0-9.]+(µs|ms|s|ns)", "took = <T>", text)
        text = re.sub(r"remaining\(\d+s\)", "remaining(<N>s)", text)
        text = text.replace(str(self.work), "<WORK>")
        text = re.sub(r"http://127\.0\.0\.1:\d+", "<URL>", text)
        text = re.sub(r"^Member +", "Member ", text, flags=re.M)  # etcdctl pads ids: %16x
        text = re.sub(r"(from|to) cluster +", r"\1 cluster ", text)
        return text

    def run(self, *args: str, endpoints: str | None = None, input: str | None = None,
            sort: bool = False, stderr: bool = True) -> subprocess.CompletedProcess:
        r = harness.etcdctl(endpoints or self.all, *args, input=input)
        shown = " ".join(a if a and " " not in a else json.dumps(a) for a in args)
        self.lines.append(f"$ etcdctl {self.norm(shown)}")
        out = self.norm(self.members(r.stdout)).splitlines()
        if stderr:  # etcdctl's zap log lines (JSON with timestamps) are left out
            err = [ln for ln in r.stderr.splitlines() if not ln.startswith('{"level"')]
            out.extend("! " + self.norm(ln) for ln in err)
        self.lines.extend(sorted(out) if sort else out)
        self.lines.append(f"[rc={r.returncode}]")
        return r

    def members(self, text: str) -> str:
        """member list rows: ids and names by the member's client endpoint (ids are random,
        names differ between the reference cluster and this one)."""
        rows = []
        for ln in text.splitlines():
            f = ln.split(", ")
            if len(f) == 6 and re.fullmatch(r"[0-9a-f]{1,16}", f[0]):
                i = self.eps.index(f[4]) if f[4] in self.eps else len(self.eps)
                f[0] = self.names.setdefault(f[0], f"<M{i}>")
                f[2] = f"<NAME{i}>" if f[2] else ""
            rows.append(", ".join(f))
        return "\n".join(rows) + ("\n" if text.endswith("\n") else "")

    def lease_id(self, r: subprocess.CompletedProcess, kind: str = "L") -> str:
        lid = r.stdout.split()[1]
        self._name(lid, kind)
        return lid

    def add_alias(self) -> None:
        for raw, ph in sorted(self.names.items(), key=lambda kv: -len(kv[0])):
            self.lines = [ln.replace(raw, ph) for ln in self.lines]
            if ph.startswith("<L"):
                self.lines = [ln.replace(f": {int(raw, 16)}", f": {ph}") for ln in self.lines]
        self.lines = [_initial_cluster(ln) for ln in self.lines]
        self.lines = [re.sub(r'^"(ClusterID|MemberID|RaftTerm)" : \d+', r'"\1" : <X>', ln)
                      for ln in self.lines]

    def transcript(self) -> str:
        self.add_alias()
        return "\n".join(self.lines) + "\n"


def _initial_cluster(line: str) -> str:
    """member add's ETCD_INITIAL_CLUSTER: the existing members' names as <NAME>, sorted."""
    m = re.fullmatch(r'ETCD_INITIAL_CLUSTER="(.*)"', line)
    if not m:
        return line
    parts = sorted(p if p.startswith("node4=") else "<NAME>=" + p.split("=", 1)[1]
                   for p in m.group(1).split(","))
    return 'ETCD_INITIAL_CLUSTER="' + ",".join(parts) + '"'


def _connected(pid: int) -> bool:
    import psutil
    try:
        return any(c.status == psutil.CONN_ESTABLISHED
                   for c in psutil.Process(pid).net_connections(kind="tcp"))
    except psutil.Error:
        return False


def _wait_lines(path: Path, n: int, timeout: float = 15) -> None:
    harness.wait_until(lambda: len(path.read_text().splitlines()) >= n, timeout, 0.05,
                       f"{n} lines in {path.name}")


def walkthrough(endpoints: list[str], workdir: Path) -> str:
    w = Walk(endpoints, workdir)
    # 2.3 put, 2.4 get / --prefix, 2.5 del, 2.6 list all keys
    w.run("put", "foo", "Hello ETCD")
    w.run("get", "foo")
    w.run("put", "foo2", "second")
    w.run("get", "foo", "--prefix")
    w.run("del", "foo")
    w.run("del", "foo")
    w.run("get", "", "--prefix", "--keys-only")
    w.run("get", "", "--prefix")
    # 2.7 lease grant / put --lease / timetolive
    lid = w.lease_id(w.run("lease", "grant", "60"))
    w.run("put", "bar", "temporary value", f"--lease={lid}")
    w.run("lease", "timetolive", lid)
    w.run("lease", "timetolive", lid, "--keys")
    w.run("get", "bar", "-w", "fields")
    # 2.8 watch foo, watch foo --prefix (in the background, then stopped)
    watchers = []
    for i, extra in enumerate(([], ["--prefix"])):
        out = workdir / f"watch{i}.out"
        f = open(out, "w")
        p = subprocess.Popen([harness.ETCDCTL, "--endpoints=" + w.all, "watch", "foo", *extra],
                             stdout=f, stderr=subprocess.STDOUT, env={"ETCDCTL_API": "3"},
                             start_new_session=True)
        f.close()
        watchers.append((p, out, extra))
    for p, _, _ in watchers:  # etcdctl prints nothing until an event: wait for its connection
        harness.wait_until(lambda p=p: _connected(p.pid), 15, 0.05, "etcdctl watch to connect")
    time.sleep(0.5)  # then for the watch request on it
    w.run("put", "foo", "v1")
    w.run("put", "foobar", "v2")
    w.run("del", "foo")
    try:
        _wait_lines(watchers[0][1], 5)
        _wait_lines(watchers[1][1], 8)
    finally:
        for p, out, extra in watchers:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
    for p, out, extra in watchers:
        w.lines.append("$ etcdctl watch foo" + "".join(" " + e for e in extra) + "  (background)")
        w.lines.extend(w.norm(out.read_text()).splitlines())
    # 2.9 txn, interactively (-i, fed on stdin) and the stdin form
    w.run("txn", "-i", input='value("key1") = "value1"\n\nput "key2" "value2"\n\n'
                             'put "key3" "value3"\n\n')
    w.run("put", "key1", "value1")
    w.run("txn", "-i", input='value("key1") = "value1"\n\nput "key2" "value2"\n\n'
                             'put "key3" "value3"\n\n')
    w.run("txn", input='value("key1") = "value1"\n\nget key2\nget key3\n\n\n')
    w.run("get", "key", "--prefix")
    # 3.4 endpoint health, --cluster
    w.run("endpoint", "health", sort=True)
    w.run("endpoint", "health", "--cluster", endpoints=endpoints[0], sort=True)
    # 3.7/3.8 member list, member add, member remove
    w.run("member", "list", sort=True)
    spare = harness.free_ports(1)[0]
    # etcd refuses to add a voter until its peers have been connected for 5 s
    # ("etcdserver: unhealthy cluster"): retry that (bounded), show the final answer.
    deadline = time.monotonic() + 20
    while True:
        n = len(w.lines)
        r = w.run("member", "add", "node4", f"--peer-urls=http://127.0.0.1:{spare}")
        if "unhealthy cluster" not in r.stderr or time.monotonic() > deadline:
            break
        del w.lines[n:]
        time.sleep(0.5)
    new_id = r.stdout.split()[1] if r.returncode == 0 else "?"
    w.names.setdefault(new_id, "<M3>")
    cid = re.search(r"cluster +([0-9a-f]+)", r.stdout)
    if cid:
        w._name(cid.group(1), "C")
    w.run("member", "list", sort=True)
    w.run("member", "remove", new_id)
    w.run("member", "list", sort=True)
    # 4.1 txn as the guide writes it (not etcdctl's grammar: etcd refuses it), then the
    # same transaction in etcdctl's grammar
    w.run("txn", input='compare( value("foo") == "bar" )\nsuccess( put "baz" "new_value" )\n'
                       'failure( put "qux" "alternative_value" )\n')
    w.run("put", "foo", "bar")
    w.run("txn", input='value("foo") = "bar"\n\nput "baz" "new_value"\n\n'
                       'put "qux" "alternative_value"\n\n')
    w.run("get", "baz")
    w.run("get", "qux")
    # 4.2 lock with a lease: grant, put --lease, revoke
    lock = w.lease_id(w.run("lease", "grant", "60"))
    w.run("put", "lock_key", "locked", "--lease", lock)
    w.run("get", "lock_key")
    w.run("lease", "revoke", lock)
    w.run("get", "lock_key")
    w.run("lease", "timetolive", lock)
    # 3.5 / 4.3 snapshot save, snapshot restore --data-dir
    backup = workdir / "backup.db"
    w.run("snapshot", "save", str(backup), endpoints=endpoints[0])
    w.run("snapshot", "status", str(backup), "-w", "json", stderr=False)
    w.lines[-2] = _status_shape(w.lines[-2])
    w.run("snapshot", "restore", str(backup), "--data-dir", str(workdir / "restored"))
    w.lines.append("files: " + " ".join(sorted(
        str(p.relative_to(workdir / "restored")) for p in (workdir / "restored").rglob("*")
        if p.is_file() or p.name in ("snap", "wal"))))
    w.lines[-1] = re.sub(r"\b[0-9a-f]{16}-[0-9a-f]{16}\.(snap|wal)", r"<SEQ>.\1", w.lines[-1])
    return w.transcript()


def _status_shape(line: str) -> str:
    """snapshot status -w json: keep the revision and the key count over all of etcd's
    buckets (keyspace, leases, meta, members, removed members, cluster version, auth); the
    hash and size depend on the bbolt page layout."""
    try:
        st = json.loads(line)
    except ValueError:
        return line
    return f"status: revision={st['revision']} totalKey={st['totalKey']}"


# What three real etcd 3.4.23 members printed for this walk (see the module docstring).
EXPECTED = """\
$ etcdctl put foo "Hello ETCD"
OK
[rc=0]
$ etcdctl get foo
foo
Hello ETCD
[rc=0]
$ etcdctl put foo2 second
OK
[rc=0]
$ etcdctl get foo --prefix
foo
Hello ETCD
foo2
second
[rc=0]
$ etcdctl del foo
1
[rc=0]
$ etcdctl del foo
0
[rc=0]
$ etcdctl get "" --prefix --keys-only
foo2

[rc=0]
$ etcdctl get "" --prefix
foo2
second
[rc=0]
$ etcdctl lease grant 60
lease <L0> granted with TTL(60s)
[rc=0]
$ etcdctl put bar "temporary value" --lease=<L0>
OK
[rc=0]
$ etcdctl lease timetolive <L0>
lease <L0> granted with TTL(60s), remaining(<N>s)
[rc=0]
$ etcdctl lease timetolive <L0> --keys
lease <L0> granted with TTL(60s), remaining(<N>s), attached keys([bar])
[rc=0]
$ etcdctl get bar -w fields
"ClusterID" : <X>
"MemberID" : <X>
"Revision" : 5
"RaftTerm" : <X>
"Key" : "bar"
"CreateRevision" : 5
"ModRevision" : 5
"Version" : 1
"Value" : "temporary value"
"Lease" : <L0>
"More" : false
"Count" : 1
[rc=0]
$ etcdctl put foo v1
OK
[rc=0]
$ etcdctl put foobar v2
OK
[rc=0]
$ etcdctl del foo
1
[rc=0]
$ etcdctl watch foo  (background)
PUT
foo
v1
DELETE
foo

$ etcdctl watch foo --prefix  (background)
PUT
foo
v1
PUT
foobar
v2
DELETE
foo

$ etcdctl txn -i
compares:
success requests (get, put, del):
failure requests (get, put, del):
FAILURE

OK
[rc=0]
$ etcdctl put key1 value1
OK
[rc=0]
$ etcdctl txn -i
compares:
success requests (get, put, del):
failure requests (get, put, del):
SUCCESS

OK
[rc=0]
$ etcdctl txn
SUCCESS

key2
value2

key3
value3
[rc=0]
$ etcdctl get key --prefix
key1
value1
key2
value2
key3
value3
[rc=0]
$ etcdctl endpoint health
! <EP0> is healthy: successfully committed proposal: took = <T>
! <EP1> is healthy: successfully committed proposal: took = <T>
! <EP2> is healthy: successfully committed proposal: took = <T>
[rc=0]
$ etcdctl endpoint health --cluster
! <EP0> is healthy: successfully committed proposal: took = <T>
! <EP1> is healthy: successfully committed proposal: took = <T>
! <EP2> is healthy: successfully committed proposal: took = <T>
[rc=0]
$ etcdctl member list
<M0>, started, <NAME0>, <URL>, <EP0>, false
<M1>, started, <NAME1>, <URL>, <EP1>, false
<M2>, started, <NAME2>, <URL>, <EP2>, false
[rc=0]
$ etcdctl member add node4 --peer-urls=<URL>
Member <M3> added to cluster <C0>

ETCD_NAME="node4"
ETCD_INITIAL_CLUSTER="<NAME>=<URL>,<NAME>=<URL>,<NAME>=<URL>,node4=<URL>"
ETCD_INITIAL_ADVERTISE_PEER_URLS="<URL>"
ETCD_INITIAL_CLUSTER_STATE="existing"
[rc=0]
$ etcdctl member list
<M0>, started, <NAME0>, <URL>, <EP0>, false
<M1>, started, <NAME1>, <URL>, <EP1>, false
<M2>, started, <NAME2>, <URL>, <EP2>, false
<M3>, unstarted, , <URL>, , false
[rc=0]
$ etcdctl member remove <M3>
Member <M3> removed from cluster <C0>
[rc=0]
$ etcdctl member list
<M0>, started, <NAME0>, <URL>, <EP0>, false
<M1>, started, <NAME1>, <URL>, <EP1>, false
<M2>, started, <NAME2>, <URL>, <EP2>, false
[rc=0]
$ etcdctl txn
! Error: malformed comparison: compare( value("foo") == "bar" ); got compare("")  ""
[rc=3]
$ etcdctl put foo bar
OK
[rc=0]
$ etcdctl txn
SUCCESS

OK
[rc=0]
$ etcdctl get baz
baz
new_value
[rc=0]
$ etcdctl get qux
[rc=0]
$ etcdctl lease grant 60
lease <L1> granted with TTL(60s)
[rc=0]
$ etcdctl put lock_key locked --lease <L1>
OK
[rc=0]
$ etcdctl get lock_key
lock_key
locked
[rc=0]
$ etcdctl lease revoke <L1>
lease <L1> revoked
[rc=0]
$ etcdctl get lock_key
[rc=0]
$ etcdctl lease timetolive <L1>
lease <L1> already expired
[rc=0]
$ etcdctl snapshot save <WORK>/backup.db
Snapshot saved at <WORK>/backup.db
[rc=0]
$ etcdctl snapshot status <WORK>/backup.db -w json
status: revision=15 totalKey=22
[rc=0]
$ etcdctl snapshot restore <WORK>/backup.db --data-dir <WORK>/restored
[rc=0]
files: member/snap member/snap/<SEQ>.snap member/snap/db member/wal member/wal/<SEQ>.wal
"""


def test_seed_document_walkthrough(tmp_path):
    cluster = harness.make_cluster(tmp_path / "c", 3)
    try:
        for n in cluster.nodes:
            n.start()
        harness.wait_ready(cluster)
        got = walkthrough([n.client_url for n in cluster.nodes], tmp_path)
        backed_up = json.loads(harness.etcdctl(cluster.endpoints, "get", "", "--prefix",
                                               "-w", "json").stdout)
    finally:
        cluster.close()
    assert got == EXPECTED, "\n" + got
    # "恢复后，重新启动 ETCD 节点": a member started on the restored data dir serves the backup
    one = harness.make_cluster(tmp_path / "after-restore", 1)
    node = one.nodes[0]
    node.args[node.args.index("--data-dir") + 1] = str(tmp_path / "restored")
    try:
        node.start()
        harness.wait_ready(one)
        now = json.loads(harness.etcdctl(node.client_url, "get", "", "--prefix",
                                         "-w", "json").stdout)
    finally:
        one.close()
    assert now["kvs"] == backed_up["kvs"]
    assert now["header"]["revision"] == backed_up["header"]["revision"] == 15


if __name__ == "__main__":  # reference run: python3 tests/node/test_seed_document.py EP1,EP2,EP3
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        print(walkthrough(sys.argv[1].split(","), Path(d)), end="")
