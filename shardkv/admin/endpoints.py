"""`shardkv-admin health` and `status`: etcdctl's `endpoint health` and `endpoint status`, each
endpoint asked on its own."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import click

from shardkv.admin import options, output
from shardkv.admin.client import AdminError, Client
from shardkv.api.etcdserverpb import rpc_pb2 as pb

PERMISSION_DENIED = "etcdserver: permission denied"
MAX_PARALLEL = 16  # endpoints checked at once


def cluster_option(f):
    return click.option("--cluster", is_flag=True,
                        help="every member's client URLs, from member list")(f)


def selected_endpoints(cluster: bool) -> list[str]:
    """The --endpoints, or with --cluster every client URL in member list (etcdctl's
    endpointsFromCluster)."""
    c = options.client()
    if not cluster:
        return list(c.endpoints)
    try:
        resp = c.call("Cluster", "MemberList", pb.MemberListRequest())
    except AdminError as exc:
        raise AdminError("failed to fetch endpoints from etcd cluster member list: "
                         f"{exc.message}") from None
    return [u for m in resp.members for u in m.clientURLs]


def single(endpoint: str) -> Client:
    """A client bound to one endpoint, with the session's timeouts."""
    c = options.client()
    return Client([endpoint], c.dial_timeout, c.command_timeout)


@dataclass
class Health:
    endpoint: str
    health: bool
    took: str
    error: str = ""

    def as_json(self) -> dict:
        out = {"endpoint": self.endpoint, "health": self.health, "took": self.took}
        if self.error:
            out["error"] = self.error
        return out


def check_health(endpoint: str, client: Client) -> Health:
    """etcdctl's check: a linearizable get of key "health" goes through consensus; permission
    denied counts as healthy (the request reached the Raft group)."""
    start = time.monotonic()
    try:
        client.call("KV", "Range", pb.RangeRequest(key=b"health"), endpoint)
        error = ""
    except AdminError as exc:
        error = "" if exc.message == PERMISSION_DENIED else exc.message
    finally:
        client.close()
    return Health(endpoint, not error, output.go_duration(time.monotonic() - start), error)


@click.command("health")
@cluster_option
@options.global_options()
def health(cluster: bool) -> None:
    """Whether each endpoint commits a read through Raft (exit 1 if any does not)."""
    eps = selected_endpoints(cluster)
    clients = [single(ep) for ep in eps]  # here: the click context is not seen from threads
    with ThreadPoolExecutor(min(MAX_PARALLEL, len(eps)) or 1) as pool:
        results = list(pool.map(check_health, eps, clients))
    fmt = options.write_out()
    if fmt == "json":
        output.print_json([h.as_json() for h in results])
    elif fmt == "table":
        click.echo(output.table(["endpoint", "health", "took", "error"],
                                [[h.endpoint, str(h.health).lower(), h.took, h.error]
                                 for h in results]))
    else:  # etcdctl prints these lines on stderr
        for h in results:
            if h.health:
                click.echo(f"{h.endpoint} is healthy: successfully committed proposal: "
                           f"took = {h.took}", err=True)
            else:
                click.echo(f"{h.endpoint} is unhealthy: failed to commit proposal: {h.error}",
                           err=True)
    if any(not h.health for h in results):
        raise AdminError("unhealthy cluster")


STATUS_HEADER = ["endpoint", "ID", "version", "db size", "is leader", "is learner", "raft term",
                 "raft index", "raft applied index", "errors"]


def status_row(endpoint: str, s: pb.StatusResponse) -> list[str]:
    return [endpoint, output.hex_id(s.header.member_id), s.version,
            output.humanize_bytes(s.dbSize), str(s.leader == s.header.member_id).lower(),
            str(s.isLearner).lower(), str(s.raftTerm), str(s.raftIndex),
            str(s.raftAppliedIndex), ", ".join(s.errors)]


@click.command("status")
@cluster_option
@options.global_options()
def status(cluster: bool) -> None:
    """Each endpoint's member id, version, db size, leadership and Raft term/index."""
    found: list[tuple[str, pb.StatusResponse]] = []
    failed = False
    for ep in selected_endpoints(cluster):
        try:
            found.append((ep, options.client().call("Maintenance", "Status",
                                                     pb.StatusRequest(), ep)))
        except AdminError as exc:
            failed = True
            click.echo(f"Failed to get the status of endpoint {ep} ({exc.message})", err=True)
    fmt = options.write_out()
    if fmt == "json":
        output.print_json([{"Endpoint": ep, "Status": output.go_json(s)} for ep, s in found])
    elif fmt == "table":
        click.echo(output.table(STATUS_HEADER, [status_row(ep, s) for ep, s in found]))
    else:
        for ep, s in found:
            click.echo(", ".join(status_row(ep, s)))
    if failed:
        raise AdminError("")  # each failure is reported above, as etcdctl does
