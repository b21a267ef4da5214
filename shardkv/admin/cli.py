"""Command line entry point of shardkv-admin."""
import shutil

import click

from shardkv.admin import topology


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """shardkv-admin: operate local shardkv topologies."""


@main.group()
def cluster() -> None:
    """Start and stop a local topology described by a TOML file (see configs/)."""


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
        raise click.ClickException(str(exc)) from None
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


if __name__ == "__main__":
    main()
