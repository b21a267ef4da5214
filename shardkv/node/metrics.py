"""--listen-metrics-urls: etcd's /metrics (Prometheus text, a few of etcd's metric names, read
from the member at scrape time) and /health, over a minimal HTTP/1.0 server on the loop."""
from __future__ import annotations

import asyncio
import json
from urllib.parse import urlparse

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from shardkv import rejected
from shardkv.raft import NONE


class _MemberCollector:
    def __init__(self, member) -> None:
        self.m = member

    def collect(self):
        m = self.m
        values = {
            "etcd_server_has_leader": ("Whether a leader exists (1) or not (0).",
                                       int(m.leader != NONE)),
            "etcd_server_is_leader": ("Whether this member is the leader.", int(m.is_leader)),
            "etcd_server_proposals_applied_total": ("Applied Raft index.", m.applied),
            "etcd_server_proposals_committed_total": ("Committed Raft index.",
                                                      m.node.raft.log.committed),
            "etcd_server_proposals_pending": ("Proposals waiting to be applied.",
                                              m.pending_proposals),
            "etcd_mvcc_db_total_size_in_bytes": ("Backend database size.", m.store.size()),
            "etcd_debugging_mvcc_current_revision": ("Current revision.",
                                                     m.store.current_revision),
        }
        for name, (doc, value) in values.items():
            yield GaugeMetricFamily(name, doc, value=value)


async def serve(member, urls: list[str]) -> list[asyncio.AbstractServer]:
    registry = CollectorRegistry()
    registry.register(_MemberCollector(member))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            path = request.split()[1].decode() if len(request.split()) > 1 else "/"
            status, ctype, body = _route(path, member, registry)
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    servers = []
    for url in urls:
        parsed = urlparse(url)
        servers.append(await asyncio.start_server(handle, parsed.hostname, parsed.port))
    return servers


def _route(path: str, member, registry) -> tuple[str, str, bytes]:
    if path.startswith("/metrics"):
        body = generate_latest(registry) + generate_latest(rejected.REGISTRY)
        return "200 OK", "text/plain; version=0.0.4", body
    if path.startswith("/health"):
        healthy = member.leader != NONE
        body = json.dumps({"health": "true" if healthy else "false"}).encode()
        return ("200 OK" if healthy else "503 Service Unavailable"), "application/json", body
    return "404 Not Found", "text/plain", b"404 page not found\n"
