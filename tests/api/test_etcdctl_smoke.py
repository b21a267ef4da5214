"""The real etcdctl (3.4) talks to a grpc.aio server built on our generated stubs.

A tiny fake server (fixed answers, no store) proves the wire contract end to end:
method paths, message encoding, and error statuses as etcdctl renders them.
Skips when etcdctl is not on PATH (apt-get install etcd-client).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading

import grpc
import pytest

from shardkv.api import errors
from shardkv.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from shardkv.api.mvccpb import kv_pb2

ETCDCTL = shutil.which("etcdctl")
pytestmark = pytest.mark.skipif(
    ETCDCTL is None, reason="etcdctl not on PATH (apt-get install etcd-client)"
)

CLUSTER_ID = 0x1C2D3E4F5A6B7C8D
MEMBER_ID = 0x8E9F0A1B2C3D4E5F
REVISION = 42
RAFT_TERM = 7


def header() -> rpc_pb2.ResponseHeader:
    return rpc_pb2.ResponseHeader(
        cluster_id=CLUSTER_ID, member_id=MEMBER_ID, revision=REVISION, raft_term=RAFT_TERM
    )


class FakeKV(rpc_pb2_grpc.KVServicer):
    def __init__(self) -> None:
        self.puts: list[tuple[bytes, bytes]] = []

    async def Range(self, request, context):
        if request.key == b"compacted":
            await errors.abort(context, errors.ErrCompacted)
        if request.key == b"noleader":
            await errors.ErrNoLeader.abort(context)
        kv = kv_pb2.KeyValue(key=b"foo", value=b"bar", create_revision=2,
                             mod_revision=REVISION, version=3)
        return rpc_pb2.RangeResponse(header=header(), kvs=[kv], count=1)

    @errors.etcd_errors
    async def Put(self, request, context):
        if request.key == b"full":
            raise errors.ErrNoSpace
        self.puts.append((request.key, request.value))
        return rpc_pb2.PutResponse(header=header())


class FakeMaintenance(rpc_pb2_grpc.MaintenanceServicer):
    async def Status(self, request, context):
        return rpc_pb2.StatusResponse(
            header=header(), version="3.4.23", dbSize=20480, leader=MEMBER_ID,
            raftIndex=100, raftTerm=RAFT_TERM, raftAppliedIndex=100, dbSizeInUse=16384,
        )


class FakeWatch(rpc_pb2_grpc.WatchServicer):
    """Answers the first create request with `created`, then one PUT event."""

    async def Watch(self, request_iterator, context):
        async for req in request_iterator:
            if req.WhichOneof("request_union") == "create_request":
                cr = req.create_request
                yield rpc_pb2.WatchResponse(header=header(), watch_id=0, created=True)
                kv = kv_pb2.KeyValue(key=cr.key, value=b"v1", create_revision=REVISION + 1,
                                     mod_revision=REVISION + 1, version=1)
                yield rpc_pb2.WatchResponse(
                    header=header(), watch_id=0,
                    events=[kv_pb2.Event(type=kv_pb2.Event.PUT, kv=kv)],
                )


class FakeCluster(rpc_pb2_grpc.ClusterServicer):
    async def MemberList(self, request, context):
        m = rpc_pb2.Member(ID=MEMBER_ID, name="n1", peerURLs=["http://127.0.0.1:2380"],
                           clientURLs=["http://127.0.0.1:2379"])
        return rpc_pb2.MemberListResponse(header=header(), members=[m])


class BackgroundServer:
    """A grpc.aio server running on its own event loop in a daemon thread."""

    def __init__(self) -> None:
        self.kv = FakeKV()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def _start(self) -> None:
        self.server = grpc.aio.server()
        rpc_pb2_grpc.add_KVServicer_to_server(self.kv, self.server)
        rpc_pb2_grpc.add_MaintenanceServicer_to_server(FakeMaintenance(), self.server)
        rpc_pb2_grpc.add_WatchServicer_to_server(FakeWatch(), self.server)
        rpc_pb2_grpc.add_ClusterServicer_to_server(FakeCluster(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server():
    srv = BackgroundServer()
    srv.start()
    yield srv
    srv.stop()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    return env


def _argv(server: BackgroundServer, *args: str) -> list[str]:
    return [ETCDCTL, f"--endpoints=127.0.0.1:{server.port}", "--dial-timeout=3s",
            "--command-timeout=5s", *args]


def etcdctl(server: BackgroundServer, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(server, *args), env=_env(), capture_output=True, text=True,
                          timeout=20)


def test_get(server):
    r = etcdctl(server, "get", "foo")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "foo\nbar\n"


def test_get_json_carries_header_and_kv(server):
    r = etcdctl(server, "-w", "json", "get", "foo")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["header"] == {"cluster_id": CLUSTER_ID, "member_id": MEMBER_ID,
                             "revision": REVISION, "raft_term": RAFT_TERM}
    assert out["count"] == 1
    (kv,) = out["kvs"]
    # etcdctl's JSON printer base64-encodes bytes.
    assert kv["key"] == "Zm9v" and kv["value"] == "YmFy"
    assert kv["mod_revision"] == REVISION and kv["version"] == 3


def test_put(server):
    r = etcdctl(server, "put", "foo", "bar")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "OK\n"
    assert (b"foo", b"bar") in server.kv.puts


def test_endpoint_status_json(server):
    r = etcdctl(server, "-w", "json", "endpoint", "status")
    assert r.returncode == 0, r.stderr
    (ep,) = json.loads(r.stdout)
    assert ep["Endpoint"] == f"127.0.0.1:{server.port}"
    st = ep["Status"]
    assert st["header"] == {"cluster_id": CLUSTER_ID, "member_id": MEMBER_ID,
                            "revision": REVISION, "raft_term": RAFT_TERM}
    assert st["version"] == "3.4.23"
    assert st["dbSize"] == 20480 and st["dbSizeInUse"] == 16384
    assert st["leader"] == MEMBER_ID
    assert st["raftIndex"] == 100 and st["raftAppliedIndex"] == 100 and st["raftTerm"] == RAFT_TERM


def test_compacted_error_text_reaches_etcdctl(server):
    r = etcdctl(server, "get", "compacted")
    assert r.returncode != 0
    # etcdctl's own error line carries etcd's exact text (clientv3 maps it by message).
    assert r.stderr.endswith("Error: etcdserver: mvcc: required revision has been compacted\n"), r.stderr


def test_put_error_via_decorator_reaches_etcdctl(server):
    r = etcdctl(server, "put", "full", "x")
    assert r.returncode != 0
    assert r.stderr.endswith("Error: etcdserver: mvcc: database space exceeded\n"), r.stderr


def test_unimplemented_rpc_is_an_error_not_a_hang(server):
    r = etcdctl(server, "del", "foo")
    assert r.returncode != 0
    assert "Unimplemented" in r.stderr or "not implemented" in r.stderr.lower(), r.stderr


def test_member_list_json(server):
    r = etcdctl(server, "-w", "json", "member", "list")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["header"]["cluster_id"] == CLUSTER_ID
    (m,) = out["members"]
    assert m["ID"] == MEMBER_ID and m["name"] == "n1"
    assert m["peerURLs"] == ["http://127.0.0.1:2380"]


def test_watch_stream(server):
    """Bidirectional streaming: etcdctl watch prints the event our server sends."""
    proc = subprocess.Popen(_argv(server, "watch", "foo"), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(15, proc.kill)  # never hang the suite on a silent etcdctl
    watchdog.start()
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        watchdog.cancel()
        proc.kill()
        proc.communicate(timeout=10)
    assert lines == ["PUT\n", "foo\n", "v1\n"]
