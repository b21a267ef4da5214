"""Command line entry point of shardkv-node."""
import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """shardkv-node: not built yet (see the project's open issues)."""
    raise click.ClickException("shardkv-node is not built yet")
