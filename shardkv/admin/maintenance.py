"""`shardkv-admin defrag`, `alarm list|disarm`, `compact REV`, `move-leader ID`: etcdctl's
maintenance commands."""
from __future__ import annotations

import click

from shardkv.admin import options, output
from shardkv.admin.client import EXIT_BAD_ARGS, AdminError
from shardkv.admin.endpoints import cluster_option, selected_endpoints
from shardkv.admin.members import parse_member_id
from shardkv.api.etcdserverpb import rpc_pb2 as pb

_ALARM_NAMES = {v.number: v.name for v in pb.AlarmType.DESCRIPTOR.values}
_GET, _DEACTIVATE = pb.AlarmRequest.GET, pb.AlarmRequest.DEACTIVATE


@click.command("defrag")
@cluster_option
@options.global_options()
def defrag(cluster: bool) -> None:
    """Defragment the backend of each endpoint."""
    failures = 0
    for ep in selected_endpoints(cluster):
        try:
            options.client().call("Maintenance", "Defragment", pb.DefragmentRequest(), ep)
            click.echo(f"Finished defragmenting etcd member[{ep}]")
        except AdminError as exc:
            failures += 1
            click.echo(f"Failed to defragment etcd member[{ep}] ({exc.message})", err=True)
    if failures:
        raise AdminError("")  # reported above, as etcdctl does


@click.group()
def alarm() -> None:
    """Alarms: list, disarm."""


def _alarm_text(a: pb.AlarmMember) -> str:
    """Go's %+v of a gogoproto AlarmMember: its compact text form, zero fields left out."""
    parts = []
    if a.memberID:
        parts.append(f"memberID:{a.memberID} ")
    if a.alarm:
        parts.append(f"alarm:{_ALARM_NAMES.get(a.alarm, a.alarm)} ")
    return "".join(parts)


def _print_alarms(resp: pb.AlarmResponse) -> None:
    fmt = options.write_out()
    if fmt == "json":
        output.print_json(output.go_json(resp))
    elif fmt == "table":
        click.echo(output.table(["member ID", "alarm"], [
            [output.hex_id(a.memberID), _ALARM_NAMES.get(a.alarm, str(a.alarm))]
            for a in resp.alarms]))
    else:
        for a in resp.alarms:
            click.echo(_alarm_text(a))


@alarm.command("list")
@options.global_options()
def alarm_list() -> None:
    """Every raised alarm."""
    _print_alarms(options.client().call("Maintenance", "Alarm", pb.AlarmRequest(action=_GET)))


@alarm.command("disarm")
@options.global_options()
def alarm_disarm() -> None:
    """Disarm every raised alarm (clientv3's AlarmDisarm: list, then one request each)."""
    c = options.client()
    raised = c.call("Maintenance", "Alarm", pb.AlarmRequest(action=_GET)).alarms
    resp = pb.AlarmResponse()
    for a in raised:
        done = c.call("Maintenance", "Alarm", pb.AlarmRequest(
            action=_DEACTIVATE, memberID=a.memberID, alarm=a.alarm))
        resp.alarms.extend(done.alarms)
    _print_alarms(resp)


@click.command("compact")
@click.argument("revision", metavar="REV")
@click.option("--physical", is_flag=True,
              help="wait until the compacted entries are removed from the backend")
@options.global_options()
def compact(revision: str, physical: bool) -> None:
    """Discard every revision older than REV."""
    try:
        rev = int(revision, 10)
        if revision.strip() != revision or "_" in revision or not -2**63 <= rev < 2**63:
            raise ValueError
    except ValueError:
        raise AdminError(f'strconv.ParseInt: parsing "{revision}": invalid syntax') from None
    options.client().call("KV", "Compact", pb.CompactionRequest(revision=rev, physical=physical))
    click.echo(f"compacted revision {rev}")


@click.command("move-leader")
@click.argument("target", metavar="ID")
@options.global_options()
def move_leader(target: str) -> None:
    """Transfer leadership to the member with hex ID (asks the leader among --endpoints)."""
    target_id = parse_member_id(target, wrap=False)
    c = options.client()
    leader_ep, leader_id = None, 0
    for ep in c.endpoints:
        s = c.call("Maintenance", "Status", pb.StatusRequest(), ep)
        if s.header.member_id == s.leader:
            leader_ep, leader_id = ep, s.leader
            break
    if leader_ep is None:
        raise AdminError(f"no leader endpoint given at [{' '.join(c.endpoints)}]", EXIT_BAD_ARGS)
    resp = c.call("Maintenance", "MoveLeader", pb.MoveLeaderRequest(targetID=target_id),
                  leader_ep)
    if options.write_out() == "json":
        output.print_json(output.go_json(resp))
    else:
        click.echo(f"Leadership transferred from {leader_id:x} to {target_id:x}")
