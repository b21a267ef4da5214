"""Command line entry point of shardkv-admin."""
import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """shardkv-admin: not built yet (see the project's open issues)."""
    raise click.ClickException("shardkv-admin is not built yet")
