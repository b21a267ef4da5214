"""Endpoints, gRPC channels, timeouts and errors of shardkv-admin, as etcdctl has them.

etcdctl's exit codes (``etcdctl/ctlv3/command/error.go``) so scripts written for etcdctl
read ours the same way; errors print as etcdctl prints them: one line, ``Error: <etcd's
text>`` on stderr.
"""
from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc

from shardkv.api import errors
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc

EXIT_ERROR = 1
EXIT_INTERRUPTED = 5
EXIT_BAD_ARGS = 128

DEADLINE_EXCEEDED = "context deadline exceeded"  # what Go's clients say on any timeout

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_TIMEOUT = 24 * 3600.0  # a bound on every wait, whatever a flag says
# A bound on what one answer may make us hold: snapshot chunks are 1 MiB (shardkv) or 32 KiB
# (etcd); the other answers this tool asks for are small.
MAX_RECEIVE = 64 << 20


class AdminError(Exception):
    """A failure to report as ``Error: <message>`` and exit with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def parse_duration(text: str) -> float:
    """Seconds from a Go duration ("2s", "1m30s", "500ms") or a plain number of seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNIT[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise AdminError(f'time: invalid duration "{text}"', EXIT_BAD_ARGS) from None
    if not 0 < seconds <= MAX_TIMEOUT:
        raise AdminError(f"duration {text!r} must be > 0 and at most {MAX_TIMEOUT:.0f}s",
                         EXIT_BAD_ARGS)
    return seconds


def parse_endpoints(text: str) -> list[str]:
    """etcdctl's --endpoints: a comma list of host:port or http://host:port."""
    eps = [e.strip() for e in text.split(",") if e.strip()]
    if not eps:
        raise AdminError("no endpoints given", EXIT_BAD_ARGS)
    for ep in eps:
        target(ep)
    return eps


def target(endpoint: str) -> str:
    """The gRPC target (host:port) of an endpoint."""
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    try:
        u = urlsplit(endpoint)
        port = u.port
    except ValueError:
        port = None
    if u.scheme == "https":
        raise AdminError(f"{endpoint}: TLS endpoints are not supported yet", EXIT_BAD_ARGS)
    if u.scheme != "http" or not u.hostname or port is None or u.path not in ("", "/"):
        raise AdminError(f'URL address does not have the form "host:port": {endpoint}',
                         EXIT_BAD_ARGS)
    return u.netloc


def go_code(code: grpc.StatusCode) -> str:
    """grpc-go's name of a status code: DEADLINE_EXCEEDED -> DeadlineExceeded."""
    return "OK" if code == grpc.StatusCode.OK else \
        "".join(p.title() for p in code.name.split("_"))


def error_text(err: grpc.RpcError) -> str:
    """What clientv3 (and so etcdctl) prints for a failed call: etcd's own text for an etcd
    error, "context deadline exceeded" for a timeout, grpc-go's form otherwise."""
    etcd = errors.from_rpc_error(err)
    if etcd is not None:
        return str(etcd)
    code = err.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DEADLINE_EXCEEDED
    return f"rpc error: code = {go_code(code)} desc = {err.details()}"


def _unreachable(err: grpc.RpcError) -> bool:
    """The member could not be reached (try another endpoint), as opposed to an answer."""
    return err.code() == grpc.StatusCode.UNAVAILABLE and errors.from_rpc_error(err) is None


@dataclass
class Client:
    """Channels to the endpoints, opened on first use and closed by ``close``."""

    endpoints: list[str]
    dial_timeout: float = 2.0
    command_timeout: float = 5.0
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def channel(self, endpoint: str) -> grpc.Channel:
        """A channel to ``endpoint`` once a TCP connection to it succeeds within the dial
        timeout (else AdminError: exit code 1, etcdctl 3.4 dials lazily and fails the command
        with "context deadline exceeded"). A plain connect rather than gRPC's connectivity
        watch: that one leaves a polling thread that fails noisily when the channel closes."""
        ch = self._channels.get(endpoint)
        if ch is None:
            host, _, port = target(endpoint).rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)),
                                         timeout=self.dial_timeout).close()
            except OSError:
                raise AdminError(DEADLINE_EXCEEDED) from None
            ch = grpc.insecure_channel(target(endpoint), options=[
                ("grpc.max_receive_message_length", MAX_RECEIVE)])
            self._channels[endpoint] = ch
        return ch

    def call(self, service: str, method: str, request: Any, endpoint: str | None = None) -> Any:
        """A unary call on ``endpoint``, or on the first endpoint that answers (as clientv3's
        balancer moves on from an unreachable member)."""
        candidates = [endpoint] if endpoint else self.endpoints
        last: AdminError | None = None
        for ep in candidates:
            try:
                stub = _STUBS[service](self.channel(ep))
            except AdminError as exc:
                last = exc
                continue
            try:
                return getattr(stub, method)(request, timeout=self.command_timeout,
                                             wait_for_ready=True)
            except grpc.RpcError as err:
                if _unreachable(err) and ep != candidates[-1]:
                    continue
                raise AdminError(error_text(err)) from None
        assert last is not None
        raise last

    def stream(self, service: str, method: str, request: Any, endpoint: str,
               timeout: float | None = None):
        """A server stream from ``endpoint`` (its iteration raises grpc.RpcError)."""
        stub = _STUBS[service](self.channel(endpoint))
        return getattr(stub, method)(request, timeout=timeout, wait_for_ready=True)

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()


_STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "KV": rpc.KVStub, "Cluster": rpc.ClusterStub, "Maintenance": rpc.MaintenanceStub,
}
