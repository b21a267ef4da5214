"""Client intake processes: gRPC served on more than one core.

One Python process serves about 9,000 trivial gRPC calls per second and spends ~120 µs of CPU on
each, so a member that terminates every client call itself is capped by gRPC, not by Raft or
LMDB (see docs/performance.md). With ``--client-workers N`` the member starts N intake
processes that bind the client URLs together (SO_REUSEPORT: the kernel spreads connections
over them) and:

* serve etcd's KV service (Range, Put, DeleteRange, Txn, Compact) by converting each request
  to its mvcc struct and sending it to the member over ZeroMQ, many requests per message
  (``RemoteKV``); the member runs it exactly as its own KV service would (``services.kv.
  execute``: same checks, ReadIndex, proposal, errors) and answers in batches (``IntakeHub``);
* pass every other call (Watch, Lease, Cluster, Maintenance, Auth, Lock, Election) through,
  as raw bytes, to the member's own gRPC server on a private loopback port (``_Proxy``).

An intake process holds no state: it exits when its member does.

Wire (msgpack): worker -> member ``[[id, kind, body], ...]``; member -> worker
``[[id, status, body], ...]`` with status 0 (body = the response struct) or 1 (body =
``[grpc code value, message]``).
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from typing import Any

import grpc
import msgspec
import zmq

from shardkv import rejected
from shardkv.api import errors as api_errors
from shardkv.api.etcdserverpb import rpc_pb2_grpc
from shardkv.mvcc import kv
from shardkv.node.member import DECODERS, KIND_OF
from shardkv.node.services.kv import KVService
from shardkv.node.transport import waiting

log = logging.getLogger("shardkv.intake")


class IntakeConfig(msgspec.Struct):
    member_zmq: str
    member_grpc: str
    listen: list[str]
    max_receive: int


_RESPONSES: dict[str, type] = {  # the KV kinds an intake serves -> their responses
    "range": kv.RangeResponse,
    "put": kv.PutResponse,
    "delete_range": kv.DeleteRangeResponse,
    "txn": kv.TxnResponse,
    "compaction": kv.CompactionResponse,
}
_RESPONSE_DECODERS = {k: msgspec.msgpack.Decoder(c) for k, c in _RESPONSES.items()}
_CODES = {c.value[0]: c for c in grpc.StatusCode}
_encode = msgspec.msgpack.Encoder().encode
_decode_batch = msgspec.msgpack.Decoder(list[tuple[int, str, bytes]]).decode
_decode_replies = msgspec.msgpack.Decoder(list[tuple[int, int, bytes]]).decode
_decode_error = msgspec.msgpack.Decoder(tuple[int, str]).decode


# ---------------------------------------------------------------------------- member side


class IntakeHub:
    """The member's end: runs the KV requests its intake processes send, replies in batches."""

    def __init__(self, execute) -> None:
        self._execute = execute  # async (request) -> response, raising EtcdError
        self._sock = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self._outbox: dict[bytes, list[tuple[int, int, bytes]]] = defaultdict(list)
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._sock.getsockopt(zmq.FD), self._on_readable)

    def _on_readable(self) -> None:
        for frames in waiting(self._sock):
            try:  # anything else than [identity, batch] is not from an intake process of ours
                identity, payload = frames
                batch = _decode_batch(payload)
            except (ValueError, msgspec.DecodeError) as exc:
                rejected.count("intake", "undecodable", log, str(exc))
                continue
            for rid, kind, body in batch:
                task = self._loop.create_task(self._serve(identity, rid, kind, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _serve(self, identity: bytes, rid: int, kind: str, body: bytes) -> None:
        try:
            if kind not in _RESPONSES:
                raise ValueError(f"not a KV request kind: {kind!r}")  # only KV comes this way
            # The same checks as the member's own KV service: ``execute`` validates.
            resp = await self._execute(DECODERS[kind].decode(body))
            reply = (rid, 0, _encode(resp))
        except api_errors.EtcdError as exc:
            reply = (rid, 1, _encode((exc.code.value[0], exc.message)))
        except Exception as exc:  # a bug: the client sees it as etcd would (Unknown)
            log.exception("intake request %s failed", kind)
            reply = (rid, 1, _encode((grpc.StatusCode.UNKNOWN.value[0], str(exc))))
        self._outbox[identity].append(reply)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, defaultdict(list)
        for identity, replies in outbox.items():
            self._sock.send_multipart([identity, _encode(replies)], zmq.NOBLOCK)
        # A send can consume the FD's edge for messages that arrived meanwhile: look now.
        self._on_readable()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.getsockopt(zmq.FD))
        for task in self._tasks:
            task.cancel()
        self._sock.close(0)


def check_port_free(address: str) -> None:
    """Intake processes share the client port (SO_REUSEPORT), which would also let a second
    member share it: bind it once exclusively first, as etcd's own listener would."""
    host, _, port = address.rpartition(":")
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # REUSEADDR: connections of a previous run in TIME_WAIT are not a listener
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), int(port)))
        except OSError:
            raise OSError(f"listen tcp {address}: bind: address already in use") from None


def start_processes(count: int) -> list[subprocess.Popen]:
    """Start ``count`` intake processes at once: they import grpc while the member opens its
    data dir, then wait for ``configure``."""
    level = logging.getLevelName(logging.getLogger().level).lower()
    return [subprocess.Popen([sys.executable, "-m", "shardkv.node.intake", "--parent",
                              str(os.getpid()), "--log-level", level],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            for _ in range(count)]


async def configure(procs: list[subprocess.Popen], hub: IntakeHub, member_grpc: str,
                    listen: list[str], max_receive: int, timeout: float = 30.0) -> None:
    """Tell each intake process where its member is and what to serve; return once each
    serves ``listen`` (or raise)."""
    for address in listen:
        check_port_free(address)
    config = msgspec.json.encode(IntakeConfig(hub.address, member_grpc, listen, max_receive))
    for p in procs:
        p.stdin.write(config + b"\n")
        p.stdin.close()
    for p in procs:
        line = await asyncio.wait_for(asyncio.to_thread(p.stdout.readline), timeout)
        if line.strip() != b"ready":
            raise OSError(f"client intake process failed to start (exit {p.wait()})")


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ---------------------------------------------------------------------------- intake side


class RemoteKV:
    """The KV backend of an intake process: requests go to the member in batches."""

    def __init__(self, address: str) -> None:
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.connect(address)
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[str, asyncio.Future]] = {}
        self._pending: list[tuple[int, str, bytes]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._sock.getsockopt(zmq.FD), self._on_readable)

    async def execute(self, request: Any) -> Any:
        kind = KIND_OF[type(request)]
        rid = next(self._ids)
        fut = self._loop.create_future()
        self._waiting[rid] = (kind, fut)
        if not self._pending:
            self._loop.call_soon(self._flush)  # everything queued this loop turn goes together
        self._pending.append((rid, kind, _encode(request)))
        try:
            return await fut
        finally:
            self._waiting.pop(rid, None)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._sock.send(_encode(pending), zmq.NOBLOCK)
            # A send can consume the FD's edge for replies that arrived meanwhile: look now.
            self._on_readable()

    def _on_readable(self) -> None:
        for (payload,) in waiting(self._sock):
            for rid, status, body in _decode_replies(payload):
                kind, fut = self._waiting.get(rid, (None, None))
                if fut is None or fut.done():
                    continue
                if status == 0:
                    fut.set_result(_RESPONSE_DECODERS[kind].decode(body))
                else:
                    code, message = _decode_error(body)
                    fut.set_exception(api_errors.EtcdError(_CODES[code], message))


class _Proxy(grpc.GenericRpcHandler):
    """Every call the intake does not serve itself goes to the member's gRPC server as bytes.
    Unary and streaming calls look the same on the wire, so one stream-stream relay serves
    them all."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def service(self, details: grpc.HandlerCallDetails):
        relay = functools.partial(self._relay, details.method)
        return grpc.stream_stream_rpc_method_handler(relay)

    async def _relay(self, method: str, requests, context: grpc.aio.ServicerContext):
        metadata = [(k, v) for k, v in (context.invocation_metadata() or ())
                    if not k.startswith(":") and not k.startswith("grpc-")]
        call = self._channel.stream_stream(method)(requests, metadata=metadata,
                                                   timeout=context.time_remaining())
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "",
                                 exc.trailing_metadata() or ())
        finally:
            call.cancel()


def _die_with_parent() -> None:
    """A member killed with SIGKILL takes its intake processes along at once (Linux
    PR_SET_PDEATHSIG), so that its restart finds the client port free."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # elsewhere: _watch_parent notices within half a second


async def _watch_parent(parent: int, stop_event: asyncio.Event) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    stop_event.set()


async def _serve(parent: int, cfg: IntakeConfig) -> int:
    loop = asyncio.get_running_loop()
    backend = RemoteKV(cfg.member_zmq)
    backend.start(loop)
    channel = grpc.aio.insecure_channel(cfg.member_grpc, options=[
        ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", cfg.max_receive),
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.so_reuseport", 1),
    ])
    rpc_pb2_grpc.add_KVServicer_to_server(KVService(backend), server)
    server.add_generic_rpc_handlers([_Proxy(channel)])
    for address in cfg.listen:
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            print(f"shardkv intake: listen tcp {address}: bind failed", file=sys.stderr)
            return 1
    await server.start()
    print("ready", flush=True)
    stop_event = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)
    watcher = asyncio.create_task(_watch_parent(parent, stop_event))
    await stop_event.wait()
    watcher.cancel()
    await server.stop(grace=0.5)
    await channel.close()
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description="shardkv client intake process (internal; "
                                 "configured by its member over stdin)")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--parent", type=int, required=True, help="the member's pid")
    args = ap.parse_args()
    _die_with_parent()
    if os.getppid() != args.parent:
        sys.exit(1)  # the member died before we could ask to die with it
    line = sys.stdin.buffer.readline()
    if not line.strip():
        sys.exit(1)  # the member gave up before configuring us
    cfg = msgspec.json.decode(line, type=IntakeConfig)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    sys.exit(asyncio.run(_serve(args.parent, cfg)))


if __name__ == "__main__":
    main()
