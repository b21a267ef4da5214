"""Drives a shardkv cluster with python-etcd3 (the `etcd3` package on PyPI), used as its docs
show. Run by test_python_client.py with the interpreter of a virtualenv holding etcd3 and the
protobuf 3.x it needs (its generated modules predate protobuf 4).

    python etcd3_client_script.py HOST:PORT[,HOST:PORT...]

Prints one JSON object per check: {"check": name, "ok": bool, "detail": ...}; exits 0.
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
import traceback

import etcd3

ENDPOINTS = [(h, int(p)) for h, p in (e.rsplit(":", 1) for e in sys.argv[1].split(","))]
HOST, PORT = ENDPOINTS[0]


def report(name: str, ok: bool, detail=None) -> None:
    print(json.dumps({"check": name, "ok": bool(ok), "detail": detail}, default=repr),
          flush=True)


def check(name):
    def run(fn):
        try:
            result = fn()
            report(name, True, result)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the run goes on
            report(name, False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        return fn
    return run


def wait_for(pred, timeout=15.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(interval)


etcd = etcd3.client(host=HOST, port=PORT)
other = etcd3.client(host=ENDPOINTS[-1][0], port=ENDPOINTS[-1][1])  # another member


@check("put/get")
def _():
    resp = etcd.put("/doot/a", "1")
    value, meta = etcd.get("/doot/a")
    assert value == b"1", value
    assert meta.key == b"/doot/a" and meta.version == 1, meta
    assert meta.create_revision == meta.mod_revision == resp.header.revision
    etcd.put("/doot/a", "2")
    value, meta2 = other.get("/doot/a")  # read-your-writes through another member
    assert value == b"2" and meta2.version == 2 and meta2.create_revision == meta.create_revision
    assert etcd.get("/doot/missing") == (None, None)
    return meta2.mod_revision


@check("put prev_kv")
def _():
    resp = etcd.put("/doot/a", "3", prev_kv=True)
    assert resp.prev_kv.value == b"2", resp


@check("get_prefix / get_all / sort")
def _():
    for k in ("b", "c", "d"):
        etcd.put(f"/doot/{k}", k.upper())
    keys = [m.key for _, m in etcd.get_prefix("/doot/")]
    assert keys == [b"/doot/a", b"/doot/b", b"/doot/c", b"/doot/d"], keys
    desc = [m.key for _, m in etcd.get_prefix("/doot/", sort_order="descend")]
    assert desc == keys[::-1], desc
    only = [(v, m.key) for v, m in etcd.get_prefix("/doot/", keys_only=True)]
    assert all(not v for v, _ in only), only
    everything = {m.key for _, m in etcd.get_all()}
    assert set(keys) <= everything
    ranged = [m.key for _, m in etcd.get_range("/doot/b", "/doot/d")]
    assert ranged == [b"/doot/b", b"/doot/c"], ranged


@check("delete / delete_prefix")
def _():
    assert etcd.delete("/doot/d") is True
    assert etcd.delete("/doot/d") is False
    resp = etcd.delete("/doot/c", prev_kv=True, return_response=True)
    assert resp.deleted == 1 and resp.prev_kvs[0].value == b"C", resp
    etcd.put("/gone/1", "x")
    etcd.put("/gone/2", "y")
    resp = etcd.delete_prefix("/gone/")
    assert resp.deleted == 2, resp
    assert list(etcd.get_prefix("/gone/")) == []


@check("replace")
def _():
    assert etcd.replace("/doot/b", "B", "B2") is True
    assert etcd.replace("/doot/b", "B", "B3") is False
    assert etcd.get("/doot/b")[0] == b"B2"


@check("watch (iterator) and cancel")
def _():
    events_iterator, cancel = etcd.watch("/w/key")
    got = []

    def consume():
        for event in events_iterator:
            got.append(event)
            if len(got) == 2:
                break

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    etcd.put("/w/key", "v1")
    etcd.delete("/w/key")
    t.join(15)
    cancel()
    assert len(got) == 2, got
    assert isinstance(got[0], etcd3.events.PutEvent) and got[0].value == b"v1"
    assert isinstance(got[1], etcd3.events.DeleteEvent) and got[1].key == b"/w/key"


@check("watch_prefix")
def _():
    events_iterator, cancel = etcd.watch_prefix("/wp/")
    got = []

    def consume():
        for event in events_iterator:
            got.append((type(event).__name__, event.key, event.value))
            if len(got) == 3:
                break

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    other.put("/wp/1", "a")  # written through another member
    other.put("/wx", "not watched")
    other.put("/wp/2", "b")
    other.delete("/wp/1")
    t.join(15)
    cancel()
    assert got == [("PutEvent", b"/wp/1", b"a"), ("PutEvent", b"/wp/2", b"b"),
                   ("DeleteEvent", b"/wp/1", b"")], got


@check("add_watch_callback / cancel_watch / start_revision")
def _():
    q: queue.Queue = queue.Queue()
    first = etcd.put("/cb/k", "1").header.revision
    etcd.put("/cb/k", "2")
    watch_id = etcd.add_watch_callback("/cb/k", q.put, start_revision=first)
    values = []
    try:
        while len(values) < 2:  # history from start_revision (etcd may batch it in one response)
            values += [e.value for e in q.get(timeout=10).events]
        etcd.put("/cb/k", "3")
        while len(values) < 3:
            values += [e.value for e in q.get(timeout=10).events]
    finally:
        etcd.cancel_watch(watch_id)
    assert values == [b"1", b"2", b"3"], values


@check("watch_once")
def _():
    # from the next revision on, so the put may land before or after the watch is created
    start = etcd.get_response("/once").header.revision + 1
    t = threading.Timer(0.3, lambda: other.put("/once", "x"))
    t.start()
    event = etcd.watch_once("/once", timeout=10, start_revision=start)
    assert event.value == b"x", event


@check("lease: grant, put with lease, TTL, keys, refresh, revoke")
def _():
    lease = etcd.lease(30)
    etcd.put("/lease/k1", "v", lease=lease)
    etcd.put("/lease/k2", "v", lease=lease.id)
    assert lease.granted_ttl == 30
    assert 0 < lease.remaining_ttl <= 30
    assert sorted(lease.keys) == [b"/lease/k1", b"/lease/k2"], lease.keys
    assert etcd.get("/lease/k1")[1].lease_id == lease.id
    resp = list(lease.refresh())
    assert resp[0].TTL == 30, resp
    leases = [lease_.id for lease_ in etcd.get_leases()] if hasattr(etcd, "get_leases") else None
    lease.revoke()
    assert etcd.get("/lease/k1") == (None, None)
    assert etcd.get("/lease/k2") == (None, None)
    return leases


@check("lease: explicit id and expiry")
def _():
    lease = etcd.lease(2, lease_id=0x1234)
    assert lease.id == 0x1234
    etcd.put("/lease/short", "v", lease=lease)
    wait_for(lambda: etcd.get("/lease/short") == (None, None), timeout=20)
    assert lease.remaining_ttl == -1  # etcd's answer for an expired lease


@check("transaction")
def _():
    etcd.put("/txn/key", "doot")
    ok, responses = etcd.transaction(
        compare=[etcd.transactions.value("/txn/key") == "doot",
                 etcd.transactions.version("/txn/key") > 0],
        success=[etcd.transactions.put("/txn/key", "success"),
                 etcd.transactions.get("/txn/key")],
        failure=[etcd.transactions.put("/txn/key", "failure")],
    )
    assert ok is True
    assert responses[1][0][0] == b"success", responses
    ok, responses = etcd.transaction(
        compare=[etcd.transactions.value("/txn/key") == "doot"],
        success=[etcd.transactions.put("/txn/key", "success")],
        failure=[etcd.transactions.put("/txn/key", "failure"),
                 etcd.transactions.delete("/txn/other")],
    )
    assert ok is False
    assert etcd.get("/txn/key")[0] == b"failure"
    ok, _ = etcd.transaction(
        compare=[etcd.transactions.create("/txn/absent") == 0,
                 etcd.transactions.mod("/txn/key") < 10**9],
        success=[etcd.transactions.put("/txn/absent", "made")], failure=[])
    assert ok is True and etcd.get("/txn/absent")[0] == b"made"


@check("lock: context manager, two clients contending")
def _():
    order = []
    with etcd.lock("resource", ttl=10) as lock:
        assert lock.is_acquired()
        contender = other.lock("resource", ttl=10)
        assert contender.acquire(timeout=1) is False  # held by the first client
        result = {}

        def wait_for_it():
            result["acquired"] = contender.acquire(timeout=15)
            order.append("second")

        t = threading.Thread(target=wait_for_it, daemon=True)
        t.start()
        time.sleep(0.5)
        order.append("first")
    t.join(20)
    assert result.get("acquired") is True, result
    assert order == ["first", "second"], order
    assert contender.is_acquired()
    assert contender.release() is True
    assert not contender.is_acquired()
    with etcd.lock("resource", ttl=10) as again:  # free again
        assert again.is_acquired()


@check("lock: released by its lease's expiry when the holder goes away")
def _():
    holder = etcd.lock("expiring", ttl=2)
    assert holder.acquire(timeout=5)
    waiter = other.lock("expiring", ttl=10)
    assert waiter.acquire(timeout=20)  # the holder never refreshes nor releases
    assert not holder.is_acquired()
    assert waiter.release()


@check("status / members / compact")
def _():
    status = etcd.status()
    assert status.version.startswith("3.4"), status.version
    members = list(etcd.members)
    assert len(members) == len(ENDPOINTS), members
    assert status.leader.id in {m.id for m in members}
    rev = etcd.put("/compact/k", "1").header.revision
    etcd.compact(rev)
    return {"version": status.version, "members": len(members)}


@check("put_if_not_exists / get_lease_info / prefix callbacks")
def _():
    assert etcd.put_if_not_exists("/pine", "1") is True
    assert etcd.put_if_not_exists("/pine", "2") is False
    lease = etcd.lease(40)
    etcd.put("/pine", "3", lease=lease)
    info = etcd.get_lease_info(lease.id)
    assert info.ID == lease.id and info.grantedTTL == 40 and info.keys == [b"/pine"], info
    q: queue.Queue = queue.Queue()
    watch_id = etcd.add_watch_prefix_callback("/pcb/", q.put)
    try:
        other.put("/pcb/x", "1")
        event = q.get(timeout=10).events[0]
    finally:
        etcd.cancel_watch(watch_id)
    assert event.key == b"/pcb/x" and event.value == b"1"
    start = etcd.get_response("/pfx/once").header.revision + 1
    t = threading.Timer(0.3, lambda: other.put("/pfx/once", "y"))
    t.start()
    event = etcd.watch_prefix_once("/pfx/", timeout=10, start_revision=start)
    assert event.key == b"/pfx/once"
    etcd.revoke_lease(lease.id)
    assert etcd.get("/pine") == (None, None)


@check("maintenance: snapshot, hash, defragment, alarms")
def _():
    import hashlib
    import io
    buf = io.BytesIO()
    etcd.snapshot(buf)
    data = buf.getvalue()
    body, digest = data[:-32], data[-32:]
    assert hashlib.sha256(body).digest() == digest  # etcd's stream: bbolt file + sha256
    assert len(body) % 4096 == 0 and body[16:20] == bytes.fromhex("edda0ced"), body[:32]
    assert isinstance(etcd.hash(), int)
    etcd.defragment()
    assert etcd.get("/doot/a")[0] == b"3"
    me = etcd.status().leader.id
    alarms = etcd.create_alarm(member_id=me)
    assert [(a.member_id, a.alarm_type) for a in alarms] == [(me, 1)], alarms  # NOSPACE
    assert len(list(etcd.list_alarms())) == 1
    etcd.disarm_alarm(member_id=me)
    assert list(etcd.list_alarms()) == []
    etcd.put("/after/alarm", "ok")


@check("members: add, update, remove")
def _():
    new = etcd.add_member(["http://127.0.0.1:1"])
    ids = {m.id for m in etcd.members}
    assert new.id in ids and len(ids) == len(ENDPOINTS) + 1
    etcd.update_member(new.id, ["http://127.0.0.1:2"])
    urls = {m.id: list(m.peer_urls) for m in etcd.members}
    assert urls[new.id] == ["http://127.0.0.1:2"], urls
    etcd.remove_member(new.id)
    assert len(list(etcd.members)) == len(ENDPOINTS)


etcd.close()
other.close()
