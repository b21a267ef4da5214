"""Command line entry point of shardkv-admin: etcdctl's operator commands (member, snapshot,
endpoint health/status, defrag, alarm, compact, move-leader) and local topologies (cluster).

Exit codes are etcdctl's: 0 ok, 1 error (an unreachable endpoint too), 5 snapshot save
interrupted, 128 bad arguments; every failure is one ``Error: ...`` line on stderr with etcd's text.
"""
from __future__ import annotations

import shutil
import sys

import click

from shardkv.admin import endpoints, maintenance, members, options, output, snapshot, topology
from shardkv.admin.client import EXIT_BAD_ARGS, EXIT_ERROR, EXIT_INTERRUPTED, AdminError

PROG = "shardkv-admin"  # also names the completion variable: _SHARDKV_ADMIN_COMPLETE


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@options.global_options(root=True)
def cli() -> None:
    """shardkv-admin: operate a shardkv (or etcd) cluster, as etcdctl does.

    Shell completion (bash): eval "$(_SHARDKV_ADMIN_COMPLETE=bash_source shardkv-admin)"
    """


cli.add_command(members.member)
cli.add_command(snapshot.snapshot)
cli.add_command(endpoints.health)
cli.add_command(endpoints.status)
cli.add_command(maintenance.defrag)
cli.add_command(maintenance.alarm)
cli.add_command(maintenance.compact)
cli.add_command(maintenance.move_leader)


@cli.group()
def cluster() -> None:
    """Start, stop and check a local topology described by a TOML file (see configs/)."""


@cluster.command("up")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--timeout", default=30.0, show_default=True, help="seconds to wait for health")
def cluster_up(config: str, timeout: float) -> None:
    """Start every member of CONFIG and print the client endpoints."""
    topo = topology.load(config)
    try:
        pids = topology.up(topo, timeout)
    except RuntimeError as exc:
        topology.down(topo)
        raise AdminError(str(exc)) from None
    for m in topo.members:
        click.echo(f"{m.name}: pid {pids[m.name]}, client {m.client_url}, peer {m.peer_url}, "
                   f"log {topo.data_root / (m.name + '.log')}")
    click.echo(f"ETCDCTL_ENDPOINTS={topo.endpoints}")


@cluster.command("down")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--wipe", is_flag=True, help="also delete the data root")
def cluster_down(config: str, wipe: bool) -> None:
    """Stop the members started by `cluster up CONFIG`."""
    topo = topology.load(config)
    stopped = topology.down(topo)
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing running"))
    if wipe:
        shutil.rmtree(topo.data_root, ignore_errors=True)
        click.echo(f"removed {topo.data_root}")


@cluster.command("status")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@options.global_options()
def cluster_status(config: str) -> None:
    """Each member of CONFIG: pid alive, health, leader, Raft term and index (exit 1 if any
    member is down)."""
    c = options.client()
    states = topology.status(topology.load(config), c.dial_timeout, c.command_timeout)
    fmt = options.write_out()
    if fmt == "json":
        output.print_json([s.as_json() for s in states])
    else:
        rows = [[s.name, str(s.pid or "-"), str(s.alive).lower(), s.endpoint,
                 str(s.healthy).lower(), str(s.is_leader).lower(), str(s.raft_term),
                 str(s.raft_index), s.error] for s in states]
        if fmt == "table":
            click.echo(output.table(["name", "pid", "alive", "endpoint", "health", "is leader",
                                     "raft term", "raft index", "error"], rows))
        else:
            for row in rows:
                click.echo(", ".join(row))
    down = [s.name for s in states if not s.up]
    if down:
        raise AdminError(f"members down: {', '.join(down)}")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map every failure to etcdctl's one-line error and exit code."""
    try:
        cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help, completion
        sys.exit(exc.exit_code)
    except AdminError as exc:
        if exc.message:
            click.echo(f"Error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(EXIT_BAD_ARGS)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(EXIT_ERROR)
    except (click.Abort, KeyboardInterrupt):
        click.echo("Error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(0)


if __name__ == "__main__":
    main()
