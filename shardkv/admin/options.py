"""The global flags of shardkv-admin (etcdctl's names), accepted before the command as well as
after it (``shardkv-admin -w json member list`` and ``shardkv-admin member list -w json``),
and the session a command gets from them."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from shardkv.admin.client import Client, parse_duration, parse_endpoints
from shardkv.admin.output import FORMATS

F = TypeVar("F", bound=Callable[..., Any])

ENDPOINTS_ENV = ["SHARDKV_ENDPOINTS", "ETCDCTL_ENDPOINTS"]  # ours first, etcdctl's as fallback
_KEY = "shardkv.admin.settings"


@dataclass
class Settings:
    endpoints: str = "127.0.0.1:2379"
    dial_timeout: str = "2s"
    command_timeout: str = "5s"
    write_out: str = "table"
    explicit: set[str] = field(default_factory=set)  # flags given, not defaulted
    client: Client | None = field(default=None, repr=False)


def settings(ctx: click.Context | None = None) -> Settings:
    root = (ctx or click.get_current_context()).find_root()
    return root.meta.setdefault(_KEY, Settings())


def client(ctx: click.Context | None = None) -> Client:
    """The session's client (one per invocation, closed when the command ends)."""
    ctx = ctx or click.get_current_context()
    s = settings(ctx)
    if s.client is None:
        s.client = Client(parse_endpoints(s.endpoints), parse_duration(s.dial_timeout),
                          parse_duration(s.command_timeout))
        ctx.find_root().call_on_close(s.client.close)
    return s.client


def write_out() -> str:
    return settings().write_out


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:  # given here or by the environment: later flags win
            s = settings(ctx)
            setattr(s, name, value)
            s.explicit.add(name)
    return callback


def global_options(root: bool = False) -> Callable[[F], F]:
    """The global flags, on the root group (with the environment variables) and on each command
    (so a flag given after the command overrides the one before it). Unset flags keep the
    defaults of ``Settings``; ``Settings.explicit`` names those that were set."""
    def option(*decls: str, name: str, help: str, **kw: Any) -> Callable[[F], F]:
        if root:
            help += f"  [default: {getattr(Settings, name)}]"
        return click.option(*decls, name, default=None, expose_value=False,
                            callback=_store(name), help=help, **kw)

    def decorate(f: F) -> F:
        # click lists options in the reverse of the order they are applied in
        f = option("-w", "--write-out", name="write_out", type=click.Choice(FORMATS),
                   help="output format")(f)
        f = option("--command-timeout", name="command_timeout", metavar="DURATION",
                   help="timeout of a short-running command")(f)
        f = option("--dial-timeout", name="dial_timeout", metavar="DURATION",
                   help="timeout of a connection (Go duration: 2s, 500ms)")(f)
        f = option("--endpoints", name="endpoints", metavar="LIST",
                   envvar=ENDPOINTS_ENV if root else None,
                   help="comma list of client URLs [env SHARDKV_ENDPOINTS, ETCDCTL_ENDPOINTS]")(f)
        return f
    return decorate
