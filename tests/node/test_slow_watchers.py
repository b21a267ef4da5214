"""Slow and greedy watch clients against a live member: a stream of 2,000 watchers whose client
reads nothing holds bounded memory while others are served, and later gets every event in
order; 500 watches replaying history from revision 1 leave the member answering others, and
each gets its whole history in order."""
from __future__ import annotations

import threading
import time

import grpc
import psutil
import pytest

from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc

import harness
from raw_watch_client import RawWatchClient

TIMEOUT = 10  # per request: every call below must be answered within it
MB = 1024 * 1024


@pytest.fixture
def member(tmp_path):
    cluster = harness.make_cluster(tmp_path, 1)
    try:
        cluster.nodes[0].start()
        harness.wait_ready(cluster)
        yield cluster.nodes[0]
    finally:
        cluster.close()


def read_until(client: RawWatchClient, watchers: int, events_each: int,
               timeout: float) -> dict[int, list[int]]:
    """Each watch id's event revisions, read until every watcher has ``events_each``."""
    got: dict[int, list[int]] = {}
    complete = 0
    deadline = time.monotonic() + timeout
    for resp in client.responses():
        assert not resp.canceled, resp
        revs = got.setdefault(resp.watch_id, [])
        had = len(revs)
        revs.extend(e.kv.mod_revision for e in resp.events)
        if had < events_each <= len(revs):
            complete += 1
            if complete == watchers:
                break
        assert time.monotonic() < deadline, "watch responses took too long"
    return got


def test_a_stream_that_never_reads_holds_bounded_memory_and_later_gets_everything(member):
    channel = grpc.insecure_channel(f"127.0.0.1:{member.client_port}")
    kv = rpc.KVStub(channel)
    first = kv.Range(pb.RangeRequest(key=b"x"), timeout=TIMEOUT).header.revision + 1
    proc = psutil.Process(member.proc.pid)
    start_rss = peak_rss = proc.memory_info().rss
    client = RawWatchClient("127.0.0.1", member.client_port, timeout=120)
    try:
        # From an explicit revision: every watcher sees every put below, whenever it is created.
        client.send(*(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"big", start_revision=first)) for _ in range(2000)))
        revisions = []
        for i in range(8):
            revisions.append(kv.Put(pb.PutRequest(key=b"big", value=bytes([i]) * 100 * 1024),
                                    timeout=TIMEOUT).header.revision)
            kv.Put(pb.PutRequest(key=b"other", value=b"%d" % i), timeout=TIMEOUT)
            assert kv.Range(pb.RangeRequest(key=b"other"), timeout=TIMEOUT).kvs[0].value == \
                b"%d" % i
            peak_rss = max(peak_rss, proc.memory_info().rss)
        for _ in range(20):  # and while the member has had time to try to send it all
            time.sleep(0.1)
            peak_rss = max(peak_rss, proc.memory_info().rss)
        assert peak_rss - start_rss < 300 * MB
        assert revisions[0] == first
        got = read_until(client, 2000, len(revisions), timeout=240)
        assert len(got) == 2000
        assert all(revs == revisions for revs in got.values())
    finally:
        client.close()
        channel.close()


def test_watches_replaying_history_leave_the_member_serving_others(member):
    channel = grpc.insecure_channel(f"127.0.0.1:{member.client_port}")
    kv = rpc.KVStub(channel)
    history = []
    for i in range(1000):
        history.append(kv.Put(pb.PutRequest(key=b"hist/%d" % (i % 10), value=b"h" * 100),
                              timeout=TIMEOUT).header.revision)
    client = RawWatchClient("127.0.0.1", member.client_port, timeout=120)
    result: dict = {}

    def read() -> None:
        try:
            result["got"] = read_until(client, 500, len(history), timeout=240)
        except BaseException as exc:  # handed to the test thread
            result["error"] = exc

    reader = threading.Thread(target=read)
    try:
        client.send(*(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"hist/", range_end=b"hist0", start_revision=1)) for _ in range(500)))
        reader.start()
        answered = 0
        while reader.is_alive() and answered < 200:
            kv.Put(pb.PutRequest(key=b"meanwhile", value=b"%d" % answered), timeout=TIMEOUT)
            answered += 1
        reader.join(300)
        assert not reader.is_alive() and "error" not in result, result.get("error")
        assert answered > 0
        got = result["got"]
        assert len(got) == 500 and all(revs == history for revs in got.values())
    finally:
        client.close()
        reader.join(10)
        channel.close()
