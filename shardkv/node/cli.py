"""Command line entry point of shardkv-node: an etcd 3.4 member (etcd's flags, see flags.py)."""
from __future__ import annotations

import asyncio
import faulthandler
import functools
import logging
import os
import resource
import signal
import sys
from pathlib import Path
from urllib.parse import urlparse

from shardkv import grpcwire
from shardkv.node import compactor, flags, intake, metrics
from shardkv.node.member import Member, MemberConfig, StartupError
from shardkv.node.services.maintenance import VERSION

log = logging.getLogger("shardkv.node")


def member_config(s: flags.Settings) -> MemberConfig:
    heartbeat, election = s.int("heartbeat-interval"), s.int("election-timeout")
    if election < 5 * heartbeat:
        raise flags.FlagError(f"--election-timeout[{election}ms] should be at least 5 times "
                              f"--heartbeat-interval[{heartbeat}ms]")
    quota = s.int("quota-backend-bytes")
    mode = s.get("auto-compaction-mode")
    try:
        retention = compactor.parse_retention(mode, s.get("auto-compaction-retention"))
    except ValueError as exc:
        raise flags.FlagError(str(exc)) from None
    return MemberConfig(
        name=s.get("name"),
        data_dir=s.data_dir,
        advertise_client_urls=s.urls("advertise-client-urls"),
        listen_peer_urls=s.urls("listen-peer-urls"),
        initial_advertise_peer_urls=s.urls("initial-advertise-peer-urls"),
        initial_cluster=s.initial_cluster(),
        token=s.get("initial-cluster-token"),
        state=s.get("initial-cluster-state"),
        heartbeat_ms=heartbeat,
        election_ms=election,
        snapshot_count=s.int("snapshot-count"),
        quota_bytes=quota if quota > 0 else 2 * 1024**3,
        max_request_bytes=s.int("max-request-bytes"),
        max_txn_ops=s.int("max-txn-ops"),
        auto_compaction_mode=mode,
        auto_compaction_retention=retention,
    )


FD_RESERVE = 256  # file descriptors kept for all but client connections (peers, files)


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one, as Go's runtime does for etcd;
    returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit to %d: %s", hard, exc)
    return soft


def max_concurrent_streams(settings: flags.Settings) -> int:
    value = settings.int("max-concurrent-streams")
    if not 0 <= value <= 2**32 - 1:
        raise flags.FlagError(f"invalid value {value} for flag --max-concurrent-streams "
                              "(want 0 to 4294967295)")
    return value or 2**32 - 1  # 0: no limit, as for etcd (grpc-go)


def grpc_address(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "unix") or not parsed.port:
        raise flags.FlagError(f"listen client URL {url!r}: want http://host:port "
                              "(TLS is not implemented yet)")
    return f"{parsed.hostname}:{parsed.port}"


async def serve(settings: flags.Settings) -> int:
    from shardkv.node.services import build_server, max_receive_bytes
    from shardkv.node.services.kv import execute

    client_addresses = [grpc_address(u) for u in settings.urls("listen-client-urls")]
    workers = settings.int("client-workers")
    if workers < 0:
        raise flags.FlagError("--client-workers must be 0 or more")
    if settings.get("grpc-server") not in flags.GRPC_SERVERS:
        raise flags.FlagError("--grpc-server must be native or grpcio")
    streams = max_concurrent_streams(settings)
    fd_limit = raise_fd_limit()
    intakes = intake.start_processes(workers)
    try:
        member = Member(member_config(settings))
        member.open()
        # With intake processes the member's own server is private to them (loopback).
        server, channels, ports = build_server(member, ["127.0.0.1:0"] if workers else
                                               client_addresses, settings.get("grpc-server"))
        if isinstance(server, grpcwire.Server):
            server.max_streams = streams
            # Client connections must leave the member descriptors for the rest: at the
            # limit it could not reach its peers or its files.
            server.max_connections = min(server.max_connections,
                                         max(1, fd_limit - FD_RESERVE))
        await server.start()
        await member.start()
    except BaseException:
        intake.stop(intakes)
        raise
    hub = None
    if workers:
        hub = intake.IntakeHub(functools.partial(execute, member))
        hub.start(asyncio.get_running_loop())
        try:
            await intake.configure(intakes, hub, f"127.0.0.1:{ports[0]}", client_addresses,
                                   max_receive_bytes(member))
        except BaseException:
            intake.stop(intakes)
            hub.close()
            await member.stop()
            await server.stop(grace=0)
            raise
    metrics_servers = await metrics.serve(member, settings.urls("listen-metrics-urls"))
    log.info("serving client traffic insecurely on %s", settings.get("listen-client-urls"))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(member.stopped.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    crashed = member.stopped.is_set()
    if crashed:
        log.error("member %x stopped itself (see above); shutting down", member.id)
    else:
        log.info("received shutdown request; stopping member %x", member.id)
    intake.stop(intakes)
    if hub is not None:
        hub.close()
    await member.stop()
    await server.stop(grace=1)
    for ms in metrics_servers:
        ms.close()
    await channels.close()
    log.info("stopped member %x", member.id)
    return 1 if crashed else 0


def _run_profiled(settings: flags.Settings) -> int:
    """SHARDKV_PROFILE=<dir>: cProfile the whole run, stats written to <dir>/<name>.pstats at
    a clean stop (see docs/performance.md). For finding hot spots, not for production."""
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return asyncio.run(serve(settings))
    finally:
        profiler.disable()
        out = Path(os.environ["SHARDKV_PROFILE"])
        out.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(out / f"{settings.get('name')}.pstats"))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-version", "--version"):
        print(f"shardkv-node, etcd API Version: {VERSION}")
        return
    if argv and argv[0] in ("-h", "--help"):
        print("Usage: shardkv-node [etcd 3.4 flags]\n\nAn etcd 3.4 member. Implemented flags "
              "(etcd's meanings and defaults):")
        for name in sorted(flags.IMPLEMENTED):
            default = flags.IMPLEMENTED[name] or "''"
            print(f"  --{name}  (default {default})")
        print("Other etcd 3.4 flags are accepted and ignored; TLS/auth flags refuse to start.")
        return
    try:
        settings = flags.parse(argv)
    except flags.FlagError as exc:
        print(f"shardkv-node: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=getattr(logging, settings.get("log-level").upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    flags.log_ignored(settings)
    faulthandler.enable()  # a crash in a C extension (LMDB, grpc, zmq) leaves its stack in the log
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    try:
        sys.exit(_run_profiled(settings) if os.environ.get("SHARDKV_PROFILE")
                 else asyncio.run(serve(settings)))
    except (StartupError, flags.FlagError, OSError) as exc:
        print(f"shardkv-node: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
