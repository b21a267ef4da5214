"""Command line entry point of shardkv-proxy."""
import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """shardkv-proxy: not built yet (see the project's open issues)."""
    raise click.ClickException("shardkv-proxy is not built yet")
