"""etcd 3.4's command line flags, ETCD_* environment variables and --config-file (YAML).

Precedence is etcd's: a config file, when given, replaces flags and environment entirely;
otherwise a flag beats its ETCD_* variable, which beats the default. Flags we implement have
etcd's meaning and default; the other etcd flags are accepted and reported once as having no
effect, except TLS/auth flags, which refuse startup (silently serving plaintext would be a lie).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

log = logging.getLogger("shardkv.flags")

# name -> default (as a string, like the command line). Implemented flags.
IMPLEMENTED: dict[str, str] = {
    "name": "default",
    "data-dir": "",
    # etcd says localhost; 127.0.0.1 here, so what we bind and the member id derived from the
    # peer URL never depend on how 'localhost' resolves.
    "listen-client-urls": "http://127.0.0.1:2379",
    "advertise-client-urls": "http://127.0.0.1:2379",
    "listen-peer-urls": "http://127.0.0.1:2380",
    "initial-advertise-peer-urls": "http://127.0.0.1:2380",
    "initial-cluster": "",
    "initial-cluster-token": "etcd-cluster",
    "initial-cluster-state": "new",
    "heartbeat-interval": "100",
    "election-timeout": "1000",
    "snapshot-count": "100000",
    "quota-backend-bytes": "0",
    "max-request-bytes": str(1536 * 1024),
    "max-txn-ops": "128",
    # etcd's default is math.MaxUint32 (no limit); ours bounds what one connection may hold
    # (see shardkv/grpcwire/server.py). 0 means no limit, as in etcd.
    "max-concurrent-streams": "100",
    "auto-compaction-mode": "periodic",
    "auto-compaction-retention": "0",
    "listen-metrics-urls": "",
    "log-level": "info",
    "config-file": "",
    # shardkv's own (not etcd's): processes serving gRPC for this member (see node/intake.py);
    # 0 serves every call in the member's own process.
    "client-workers": "0",
    # shardkv's own: what terminates client gRPC: "native" (shardkv.grpcwire, HTTP/2 in
    # asyncio, ~7x less CPU per call) or "grpcio" (grpc.aio).
    "grpc-server": "native",
}
GRPC_SERVERS = ("native", "grpcio")  # the values --grpc-server takes

# TLS and authentication: refused until implemented.
REFUSED = {
    "cert-file", "key-file", "trusted-ca-file", "client-cert-auth", "client-crl-file",
    "client-cert-allowed-hostname", "auto-tls", "peer-cert-file", "peer-key-file",
    "peer-trusted-ca-file", "peer-client-cert-auth", "peer-auto-tls", "peer-cert-allowed-cn",
    "peer-cert-allowed-hostname", "peer-crl-file", "cipher-suites", "auth-token", "bcrypt-cost",
}

# Other etcd 3.4 flags: accepted, logged as having no effect.
IGNORED = {
    "wal-dir", "max-snapshots", "max-wals", "backend-batch-limit", "backend-batch-interval",
    "grpc-keepalive-min-time", "grpc-keepalive-interval", "grpc-keepalive-timeout",
    "socket-reuse-port", "socket-reuse-address", "initial-election-tick-advance",
    "discovery", "discovery-fallback", "discovery-proxy", "discovery-srv", "discovery-srv-name",
    "strict-reconfig-check", "pre-vote", "enable-v2", "enable-pprof", "proxy",
    "proxy-failure-wait", "proxy-refresh-interval", "proxy-dial-timeout", "proxy-write-timeout",
    "proxy-read-timeout", "cors", "host-whitelist", "logger", "log-outputs", "debug",
    "log-package-levels", "force-new-cluster", "metrics", "backend-bbolt-freelist-type",
    "experimental-initial-corrupt-check", "experimental-corrupt-check-time",
    "experimental-enable-v2v3", "experimental-enable-lease-checkpoint",
    "experimental-compaction-batch-limit", "experimental-peer-skip-client-san-verification",
    "experimental-watch-progress-notify-interval", "experimental-backend-bbolt-freelist-type",
    "experimental-warning-apply-duration", "auth-token-ttl",
}

# Flags that take no value on the command line (``--flag`` means true, ``--flag=false`` allowed).
BOOLEAN = {
    "client-cert-auth", "auto-tls", "peer-client-cert-auth", "peer-auto-tls",
    "strict-reconfig-check", "pre-vote", "enable-v2", "enable-pprof", "debug",
    "force-new-cluster", "socket-reuse-port", "socket-reuse-address",
    "experimental-initial-corrupt-check", "experimental-enable-v2v3",
    "experimental-enable-lease-checkpoint", "experimental-peer-skip-client-san-verification",
}

ALL = set(IMPLEMENTED) | REFUSED | IGNORED


class FlagError(Exception):
    """Bad command line / environment / config file: startup stops with this message."""


@dataclass
class Settings:
    values: dict[str, str]
    ignored: list[str] = field(default_factory=list)  # given but without effect here

    def get(self, name: str) -> str:
        return self.values[name]

    def int(self, name: str) -> int:
        try:
            return int(self.values[name])
        except ValueError:
            raise FlagError(f"invalid value {self.values[name]!r} for flag --{name}") from None

    def urls(self, name: str) -> list[str]:
        return [u.strip() for u in self.values[name].split(",") if u.strip()]

    @property
    def data_dir(self) -> str:
        return self.values["data-dir"] or f"{self.values['name']}.shardkv"

    def initial_cluster(self) -> dict[str, list[str]]:
        """name -> peer URLs (etcd: "n1=http://a:2380,n1=http://b:2380,n2=...")."""
        text = self.values["initial-cluster"]
        if not text:
            peers = self.urls("initial-advertise-peer-urls")
            return {self.values["name"]: peers}
        out: dict[str, list[str]] = {}
        for part in text.split(","):
            name, sep, url = part.strip().partition("=")
            if not sep or not name or not url:
                raise FlagError(f"--initial-cluster: cannot parse {part!r} (want name=url)")
            out.setdefault(name, []).append(url)
        return out


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    given = _parse_argv(argv)
    config_file = given.get("config-file") or environ.get("ETCD_CONFIG_FILE", "")
    if config_file:
        given = _load_config_file(config_file)
    else:
        for name in ALL:
            env = "ETCD_" + name.upper().replace("-", "_")
            if env in environ and name not in given:
                given[name] = environ[env]
    refused = sorted(n for n in given if n in REFUSED and given[n] not in ("", "false"))
    if refused:
        raise FlagError("TLS/authentication is not implemented yet; refusing to start with "
                        + ", ".join("--" + n for n in refused))
    values = dict(IMPLEMENTED)
    values.update({k: v for k, v in given.items() if k in IMPLEMENTED})
    if values["initial-cluster-state"] not in ("new", "existing"):
        raise FlagError(f"invalid value {values['initial-cluster-state']!r} for flag "
                        "--initial-cluster-state (want new or existing)")
    return Settings(values, sorted(n for n in given if n in IGNORED))


def _parse_argv(argv: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            raise FlagError(f"unexpected argument {arg!r} (etcd takes flags only)")
        name, has_value, value = arg.lstrip("-").partition("=")
        if name not in ALL:
            raise FlagError(f"unknown flag: --{name}")
        if not has_value:
            if name in BOOLEAN:
                value = "true"
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise FlagError(f"flag needs an argument: --{name}")
        out[name] = value
        i += 1
    return out


def _load_config_file(path: str) -> dict[str, str]:
    """etcd's YAML config keys are the flag names; lists and booleans become flag strings."""
    import yaml  # only needed for --config-file

    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except OSError as exc:
        raise FlagError(f"cannot read --config-file {path}: {exc}") from None
    out: dict[str, str] = {}
    for key, value in doc.items():
        if key not in ALL:
            raise FlagError(f"unknown key {key!r} in config file {path}")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif value is None:
            value = ""
        out[key] = str(value)
    return out


def log_ignored(settings: Settings) -> None:
    for name in settings.ignored:
        log.warning("flag --%s is accepted for etcd compatibility but has no effect", name)
