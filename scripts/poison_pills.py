"""Issue 14, part 1: send each "poison pill" request of the issue to a fresh 3-member cluster and
report what it answered, which members are still up afterwards, and whether the members that
stopped come back when restarted (a poison entry stays in the Raft log and is replayed).

    PYTHONPATH=$PWD python3 scripts/poison_pills.py            # this checkout
    PYTHONPATH=/work/base python3 scripts/poison_pills.py      # an older checkout's members

Members run from whatever ``shardkv`` PYTHONPATH names (the harness starts
``python -m shardkv.node.cli``). One cluster per input; every process is killed at the end.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "node"))

import harness  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc  # noqa: E402
from shardkv.api.v3electionpb import v3election_pb2 as epb  # noqa: E402
from shardkv.api.v3electionpb import v3election_pb2_grpc as erpc  # noqa: E402
from shardkv.api.v3lockpb import v3lock_pb2 as lpb  # noqa: E402
from shardkv.api.v3lockpb import v3lock_pb2_grpc as lrpc  # noqa: E402

TIMEOUT = 5.0
SETTLE_S = 3.0  # time for every member to apply the entry before looking who is still up


def _put(key: bytes, lease: int) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"v", lease=lease))


def _first_member(ch: grpc.Channel) -> int:
    return rpc.ClusterStub(ch).MemberList(pb.MemberListRequest(), timeout=TIMEOUT).members[0].ID


CASES: dict[str, Callable[[grpc.Channel], object]] = {
    "put lease=-5": lambda ch: rpc.KVStub(ch).Put(
        pb.PutRequest(key=b"k", value=b"v", lease=-5), timeout=TIMEOUT),
    "txn put lease=-5": lambda ch: rpc.KVStub(ch).Txn(
        pb.TxnRequest(success=[_put(b"k", -5)]), timeout=TIMEOUT),
    "lock lease=-5": lambda ch: lrpc.LockStub(ch).Lock(
        lpb.LockRequest(name=b"l", lease=-5), timeout=TIMEOUT),
    "campaign lease=-5": lambda ch: erpc.ElectionStub(ch).Campaign(
        epb.CampaignRequest(name=b"e", lease=-5, value=b"x"), timeout=TIMEOUT),
    "lease grant ID=-5": lambda ch: rpc.LeaseStub(ch).LeaseGrant(
        pb.LeaseGrantRequest(TTL=30, ID=-5), timeout=TIMEOUT),
    "lease revoke ID=-5": lambda ch: rpc.LeaseStub(ch).LeaseRevoke(
        pb.LeaseRevokeRequest(ID=-5), timeout=TIMEOUT),
    "txn compare target=9 result=9": lambda ch: rpc.KVStub(ch).Txn(pb.TxnRequest(
        compare=[pb.Compare(key=b"k", target=9, result=9)], success=[_put(b"t", 0)]),
        timeout=TIMEOUT),
    "member add http://": lambda ch: rpc.ClusterStub(ch).MemberAdd(
        pb.MemberAddRequest(peerURLs=["http://"]), timeout=TIMEOUT),
    "member add http://127.0.0.1:99999": lambda ch: rpc.ClusterStub(ch).MemberAdd(
        pb.MemberAddRequest(peerURLs=["http://127.0.0.1:99999"]), timeout=TIMEOUT),
    "member update garbage": lambda ch: rpc.ClusterStub(ch).MemberUpdate(
        pb.MemberUpdateRequest(ID=_first_member(ch), peerURLs=["garbage"]), timeout=TIMEOUT),
}


def serves(node: harness.Node) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{node.client_port}") as ch:
        try:
            kv = rpc.KVStub(ch)
            kv.Put(pb.PutRequest(key=b"probe", value=node.name.encode()), timeout=TIMEOUT)
            return kv.Range(pb.RangeRequest(key=b"probe"), timeout=TIMEOUT).kvs[0].value == \
                node.name.encode()
        except grpc.RpcError:
            return False


def attack(base: Path, name: str, send: Callable[[grpc.Channel], object]) -> str:
    cluster = harness.make_cluster(base, 3)
    try:
        for node in cluster.nodes:
            node.start()
        harness.wait_ready(cluster)
        with grpc.insecure_channel(f"127.0.0.1:{cluster.nodes[0].client_port}") as ch:
            try:
                send(ch)
                answer = "OK"
            except grpc.RpcError as exc:
                answer = f"{exc.code().name} {exc.details()!r}"
        time.sleep(SETTLE_S)
        serving = sum(serves(n) for n in cluster.nodes if n.alive)
        down = [n for n in cluster.nodes if not n.alive]
        for n in down:  # a restart replays the committed entry
            n.kill()
            n.start()
        time.sleep(SETTLE_S * 3)
        back = sum(n.alive for n in down)
        serving_after = sum(serves(n) for n in cluster.nodes if n.alive)
        return (f"{name:34} answer: {answer:56.56} | stopped {len(down)}/3, serving {serving}/3"
                f" | after restarting them: up {3 - len(down) + back}/3, serving "
                f"{serving_after}/3")
    finally:
        cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", help="substring filter on case names")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="poison-") as tmp:
        for i, (name, send) in enumerate(CASES.items()):
            if args.cases and not any(c in name for c in args.cases):
                continue
            print(attack(Path(tmp) / f"c{i}", name, send), flush=True)


if __name__ == "__main__":
    main()
