"""gRPC services of the member: etcd 3.4's v3 API."""
from __future__ import annotations

import grpc

from shardkv import grpcwire
from shardkv.api.etcdserverpb import rpc_pb2_grpc
from shardkv.api.v3electionpb import v3election_pb2_grpc
from shardkv.api.v3lockpb import v3lock_pb2_grpc
from shardkv.node.member import Member
from shardkv.node.services import cluster
from shardkv.node.services.cluster import ClusterService
from shardkv.node.services.concurrency import ElectionService, LockService
from shardkv.node.services.kv import KVService, LocalKV
from shardkv.node.services.lease import LeaderChannels, LeaseService
from shardkv.node.services.maintenance import MaintenanceService
from shardkv.node.services.watch import WatchService

GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd allows this much on top of --max-request-bytes


def max_receive_bytes(member: Member) -> int:
    return member.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES


def build_server(member: Member, listen: list[str], kind: str = "native"
                 ) -> tuple[grpc.aio.Server | grpcwire.Server, LeaderChannels, list[int]]:
    """A gRPC server with every service, bound to ``listen`` (host:port, port 0 picks one);
    not started. Returns the bound ports too. ``kind``: "native" (shardkv.grpcwire) or
    "grpcio" (grpc.aio)."""
    limit = max_receive_bytes(member)
    if kind == "native":
        server = grpcwire.Server(max_receive_message_length=limit)
    else:  # "grpcio"; the flag's value is checked at startup (cli.serve)
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.so_reuseport", 0),  # a second member on the same port must fail, not share
        ])
    channels = LeaderChannels(member)
    rpc_pb2_grpc.add_KVServicer_to_server(KVService(LocalKV(member)), server)
    rpc_pb2_grpc.add_WatchServicer_to_server(WatchService(member), server)
    rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseService(member, channels), server)
    cluster.add_to_server(ClusterService(member, channels), server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceService(member), server)
    v3lock_pb2_grpc.add_LockServicer_to_server(LockService(member), server)
    v3election_pb2_grpc.add_ElectionServicer_to_server(ElectionService(member), server)
    ports = []
    for address in listen:
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise OSError(f"listen tcp {address}: bind: address already in use")
        ports.append(bound)
    return server, channels, ports
