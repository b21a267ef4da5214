"""`shardkv-admin member list|add|remove|promote|update`: etcdctl's member commands."""
from __future__ import annotations

import re

import click

from shardkv.admin import options, output
from shardkv.admin.client import EXIT_BAD_ARGS, AdminError
from shardkv.api.etcdserverpb import rpc_pb2 as pb


_HEX = re.compile(r"0*[0-9a-fA-F]{1,16}")
_HEX_LONG = re.compile(r"[0-9a-fA-F]+")


@click.group()
def member() -> None:
    """Membership: list, add, remove, promote, update."""


def parse_member_id(text: str, wrap: bool = True) -> int:
    """Go's strconv.ParseUint(text, 16, 64); its error as etcdctl's member commands print it
    (``wrap``) or as move-leader does."""
    if _HEX.fullmatch(text):
        return int(text, 16)
    why = "value out of range" if _HEX_LONG.fullmatch(text) else "invalid syntax"
    err = f'strconv.ParseUint: parsing "{text}": {why}'
    raise AdminError(f"bad member ID arg ({err}), expecting ID in Hex" if wrap else err,
                     EXIT_BAD_ARGS)


def _peer_urls(text: str | None) -> list[str]:
    if not text:
        raise AdminError("member peer urls not provided", EXIT_BAD_ARGS)
    return text.split(",")


def member_rows(members) -> list[list[str]]:
    return [[output.hex_id(m.ID), "started" if m.name else "unstarted", m.name,
             ",".join(m.peerURLs), ",".join(m.clientURLs), str(m.isLearner).lower()]
            for m in members]


MEMBER_HEADER = ["ID", "Status", "Name", "Peer Addrs", "Client Addrs", "Is Learner"]


@member.command("list")
@options.global_options()
def member_list() -> None:
    """Every member of the cluster."""
    resp = options.client().call("Cluster", "MemberList", pb.MemberListRequest())
    fmt = options.write_out()
    if fmt == "json":
        output.print_json(output.go_json(resp))
    elif fmt == "table":
        click.echo(output.table(MEMBER_HEADER, member_rows(resp.members)))
    else:
        for row in member_rows(resp.members):
            click.echo(", ".join(row))


@member.command("add")
@click.argument("name")
@click.option("--peer-urls", help="comma list of the new member's peer URLs")
@click.option("--learner", is_flag=True, help="add as a learner (non-voting)")
@options.global_options()
def member_add(name: str, peer_urls: str | None, learner: bool) -> None:
    """Add member NAME; prints the flags to start it with."""
    urls = _peer_urls(peer_urls)
    resp = options.client().call("Cluster", "MemberAdd",
                                 pb.MemberAddRequest(peerURLs=urls, isLearner=learner))
    if options.write_out() == "json":
        output.print_json(output.go_json(resp))
        return
    new_id = resp.member.ID
    click.echo(f"Member {new_id:16x} added to cluster {resp.header.cluster_id:16x}")
    conf = [f"{name if m.ID == new_id else m.name}={u}" for m in resp.members for u in m.peerURLs]
    click.echo("")
    click.echo(f'ETCD_NAME="{name}"')
    click.echo(f'ETCD_INITIAL_CLUSTER="{",".join(conf)}"')
    click.echo(f'ETCD_INITIAL_ADVERTISE_PEER_URLS="{peer_urls}"')
    click.echo('ETCD_INITIAL_CLUSTER_STATE="existing"')


def _done(verb: str, member_id: int, resp) -> None:
    if options.write_out() == "json":
        output.print_json(output.go_json(resp))
    else:
        click.echo(f"Member {member_id:16x} {verb} cluster {resp.header.cluster_id:16x}")


@member.command("remove")
@click.argument("member_id", metavar="ID")
@options.global_options()
def member_remove(member_id: str) -> None:
    """Remove the member with hex ID."""
    mid = parse_member_id(member_id)
    resp = options.client().call("Cluster", "MemberRemove", pb.MemberRemoveRequest(ID=mid))
    _done("removed from", mid, resp)


@member.command("promote")
@click.argument("member_id", metavar="ID")
@options.global_options()
def member_promote(member_id: str) -> None:
    """Promote the learner with hex ID to a voting member."""
    mid = parse_member_id(member_id)
    resp = options.client().call("Cluster", "MemberPromote", pb.MemberPromoteRequest(ID=mid))
    _done("promoted in", mid, resp)


@member.command("update")
@click.argument("member_id", metavar="ID")
@click.option("--peer-urls", help="comma list of the member's new peer URLs")
@options.global_options()
def member_update(member_id: str, peer_urls: str | None) -> None:
    """Change the peer URLs of the member with hex ID."""
    mid = parse_member_id(member_id)
    urls = _peer_urls(peer_urls)
    resp = options.client().call("Cluster", "MemberUpdate",
                                 pb.MemberUpdateRequest(ID=mid, peerURLs=urls))
    _done("updated in", mid, resp)
