"""Peer transport over ZeroMQ: one PULL socket bound on this member's peer URL, one PUSH socket
per peer. A message's first frame starts with the sender's cluster id (a member of another cluster is
ignored, as etcd rejects a mismatched X-Etcd-Cluster-ID), the sender's id and a kind; its
payload follows:

* ``M``: a msgspec-encoded batch of Raft messages (everything for that peer from one Ready);
* ``S``: a SNAPSHOT message followed by the membership and the store image, streamed as the
  remaining frames of the same multipart message (the Raft snapshot carries no data);
* ``R``: "you may have been removed from the cluster"; believed only when its payload echoes the
  nonce of the receiver's own ``Q`` to that sender (etcd's removed member stops when a peer
  answers its own request with 410 Gone);
* ``Q``: "have you removed me?", a nonce: a member that removed the sender answers ``R`` with it.

Input is bounded where it enters: libzmq drops the connection of a peer that sends a frame
over ``max_frame_bytes`` (counted as ``connection_dropped``), queues at most RCVHWM messages
per connection, and ``drain`` reads a bounded number of messages per call while the receiver
has room. (libzmq delivers a multipart message whole, so the frames of one message are not
bounded in number: that needs peers kept out by authentication.)

Sends never block: ZMQ_IMMEDIATE makes a send to a peer without a live connection fail at once,
which the caller reports to Raft as unreachable.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import urlparse

import zmq
from zmq.utils.monitor import parse_monitor_message

from shardkv import rejected
from shardkv.trace import tr

log = logging.getLogger("shardkv.transport")
_NOBLOCK = int(zmq.NOBLOCK)  # pyzmq's enum arithmetic costs more than the call on hot paths
_HEAD = struct.Struct(">QQc")  # cluster id, sender id, kind; the first frame's payload follows
KIND_MESSAGES = b"M"
KIND_SNAPSHOT = b"S"
KIND_REMOVED = b"R"  # "you may have been removed", or the answer to a Q
KIND_REMOVAL_QUERY = b"Q"
# Receive queue per connection, in bytes of the largest frame: RCVHWM counts messages.
RECEIVE_QUEUE_BYTES = 64 * 1024 * 1024
MIN_RECEIVE_QUEUE = 16
DRAIN_BATCH = 256  # messages read per drain() call; the rest in a later loop iteration
FORMER_PEERS_KEPT = 64  # URLs of peers no longer in the configuration (answers to removed ones)
# TEST ONLY (tests/chaos): a file of peer ids (whitespace-separated, int literals) whose
# outgoing messages this member silently drops, re-read every 100 ms. Unset: no cost.
_TEST_FAULTS = os.environ.get("SHARDKV_TEST_FAULTS")

# (cluster id, sender id, kind, remaining frames)
Handler = Callable[[int, int, bytes, list[bytes]], None]


def zmq_endpoint(url: str) -> str:
    """http://host:port -> tcp://host:port (ZeroMQ binds/connects to plain TCP)."""
    parsed = urlparse(url)
    if not parsed.hostname or not parsed.port:
        raise ValueError(f"peer URL {url!r} needs a host and a port")
    host = "*" if parsed.hostname in ("0.0.0.0", "::") else parsed.hostname
    return f"tcp://{host}:{parsed.port}"


def waiting(sock: zmq.Socket) -> Iterator[list[bytes]]:
    """Every multipart message waiting on ``sock``, without blocking. Reads until EAGAIN: that
    re-arms ZeroMQ's edge-triggered FD, so no wakeup is lost."""
    recv = sock.recv_multipart
    while True:
        try:
            yield recv(_NOBLOCK)
        except zmq.Again:
            return


class PeerTransport:
    def __init__(self, member_id: int, listen_urls: list[str], handler: Handler,
                 max_frame_bytes: int, room: Callable[[], bool] = lambda: True) -> None:
        """``handler`` gets each received message; ``room()`` says whether the receiver takes
        more now (while it says no, messages wait in libzmq's bounded queue, then in TCP)."""
        self.member_id = member_id
        self.cluster_id = 0
        self._ctx = zmq.Context.instance()
        self._handler = handler
        self._room = room
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        self._pull.setsockopt(zmq.RCVHWM,
                              max(MIN_RECEIVE_QUEUE, RECEIVE_QUEUE_BYTES // max_frame_bytes))
        for url in listen_urls:
            try:
                self._pull.bind(zmq_endpoint(url))
            except zmq.ZMQError as exc:
                self._pull.close(0)
                raise OSError(f"listen tcp {url}: bind: {exc.strerror.lower()}") from None
        # libzmq drops a connection that breaks the protocol or sends an oversized frame
        # without telling the socket's user: its monitor reports the disconnection.
        self._monitor = self._pull.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._peers: dict[int, zmq.Socket] = {}
        self._peer_urls: dict[int, tuple[str, ...]] = {}
        self._former_urls: dict[int, tuple[str, ...]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False
        self._test_blocked: frozenset[int] = frozenset()
        self._test_read_at = 0.0

    def _test_dropped(self, to: int) -> bool:
        """TEST ONLY: is ``to`` listed in the SHARDKV_TEST_FAULTS file (partition injection)?"""
        now = time.monotonic()
        if now - self._test_read_at >= 0.1:
            self._test_read_at = now
            try:
                with open(_TEST_FAULTS) as f:
                    self._test_blocked = frozenset(int(t, 0) for t in f.read().split())
            except (OSError, ValueError):
                self._test_blocked = frozenset()
        return to in self._test_blocked

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drain the PULL socket whenever its (edge-triggered) FD signals."""
        self._loop = loop
        loop.add_reader(self._pull.getsockopt(zmq.FD), self.drain)
        loop.add_reader(self._monitor.getsockopt(zmq.FD), self._read_monitor)
        self._read_monitor()  # arms its edge-triggered FD

    def drain(self) -> bool:
        """Receive what is waiting, without blocking; called on FD events and each loop turn
        (ZeroMQ's FD is edge-triggered, so a missed edge must not strand messages). Reads at
        most DRAIN_BATCH messages, and none while the receiver has no room; returns True if it
        stopped for lack of room (the receiver calls again once it made some)."""
        self._drain_scheduled = False
        if self._pull.closed:
            return False  # a drain scheduled before close()
        recv = self._pull.recv_multipart
        for _ in range(DRAIN_BATCH):
            if not self._room():
                return True
            try:
                frames = recv(_NOBLOCK)
            except zmq.Again:
                return False
            tr("recv")
            self._deliver(frames)
        if self._loop is not None and not self._drain_scheduled:
            self._drain_scheduled = True  # more may wait: read on after other callbacks ran
            self._loop.call_soon(self.drain)
        return False

    def _deliver(self, frames: list[bytes]) -> None:
        first = frames[0]
        if len(first) < _HEAD.size:
            rejected.count("peer", "short_header", log, f"{len(first)}-byte first frame")
            return
        cluster_id, sender, kind = _HEAD.unpack_from(first)
        try:
            self._handler(cluster_id, sender, kind, [first[_HEAD.size:], *frames[1:]])
        except Exception:
            # The handler checks and queues; it must not raise. If it does anyway, this one
            # message is lost, not the reader (no Raft state is changed while handling).
            log.exception("handling a peer message of kind %r from %x failed", kind, sender)
            rejected.count("peer", "handler_error")

    def _read_monitor(self) -> None:
        while True:
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(_NOBLOCK))
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                rejected.count("peer", "connection_dropped", log,
                               "a peer connection closed (an oversized frame, a protocol "
                               "error, or the peer went away)")

    def set_peers(self, peers: dict[int, Iterable[str]]) -> None:
        """Connect to every peer (id -> peer URLs), drop sockets of peers no longer listed."""
        for pid in list(self._peers):
            if pid not in peers or tuple(peers[pid]) != self._peer_urls.get(pid):
                self._peers.pop(pid).close(linger=1000)  # let a last word (e.g. R) go out
                urls = self._peer_urls.pop(pid, ())
                if pid not in peers and urls:
                    self._former_urls.pop(pid, None)
                    self._former_urls[pid] = urls
                    if len(self._former_urls) > FORMER_PEERS_KEPT:
                        del self._former_urls[next(iter(self._former_urls))]
        for pid, urls in peers.items():
            if pid == self.member_id or pid in self._peers or not urls:
                continue
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.setsockopt(zmq.RECONNECT_IVL, 50)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            for url in urls:
                sock.connect(zmq_endpoint(url))
            self._peers[pid] = sock
            self._peer_urls[pid] = tuple(urls)

    def connected(self) -> list[int]:
        """Peers with a live connection now (with ZMQ_IMMEDIATE a PUSH socket is writable only
        once a connection to its peer is up)."""
        return [pid for pid, sock in self._peers.items()
                if sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT]

    def send(self, to: int, kind: bytes, frames: list[bytes]) -> bool:
        """Queue one multipart message for ``to``; False if it cannot go now."""
        sock = self._peers.get(to)
        if sock is None:
            return False
        if _TEST_FAULTS and self._test_dropped(to):
            return True  # lost on the (test-partitioned) wire
        # One frame where possible: every ZeroMQ frame costs a call into libzmq, and copying
        # is cheaper than pyzmq's zero-copy below ~64 KiB.
        first = _HEAD.pack(self.cluster_id, self.member_id, kind) + frames[0]
        try:
            if len(frames) == 1:
                sock.send(first, _NOBLOCK)
            else:
                sock.send_multipart([first, *frames[1:]], _NOBLOCK)
        except zmq.Again:
            return False
        return True

    def send_former(self, to: int, kind: bytes, frames: list[bytes]) -> bool:
        """Send one message to a peer no longer in the configuration (at its last known URLs),
        over a socket of its own that lives until the message left or a second passed."""
        urls = self._former_urls.get(to)
        if not urls:
            return False
        sock = self._ctx.socket(zmq.PUSH)
        try:
            sock.setsockopt(zmq.SNDHWM, 1)
            for url in urls:
                sock.connect(zmq_endpoint(url))
            sock.send_multipart([_HEAD.pack(self.cluster_id, self.member_id, kind) + frames[0],
                                 *frames[1:]], _NOBLOCK)
        except zmq.ZMQError:
            return False
        finally:
            sock.close(linger=1000)
        return True

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._pull.getsockopt(zmq.FD))
            self._loop.remove_reader(self._monitor.getsockopt(zmq.FD))
        for sock in self._peers.values():
            sock.close(0)
        self._peers.clear()
        self._pull.disable_monitor()
        self._monitor.close(0)
        self._pull.close(0)
