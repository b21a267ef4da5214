"""`shardkv-admin snapshot save|status|restore`: etcdctl's snapshot commands."""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import IO

import click
import grpc

from shardkv.admin import dbfile, options, output, restore
from shardkv.admin.client import (EXIT_BAD_ARGS, EXIT_INTERRUPTED, MAX_TIMEOUT, AdminError,
                                  error_text)
from shardkv.api.etcdserverpb import rpc_pb2 as pb


@click.group()
def snapshot() -> None:
    """Backups: save, status, restore."""


class Progress:
    """Bytes received, total (if the member sends etcd's remaining_bytes) and rate on one
    stderr line, redrawn at most 10 times a second;
    silent when stderr is not a terminal (scripts, logs)."""

    def __init__(self, stream: IO[str], enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, done: int, total: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and not final):
            return
        self.last = now
        rate = f"{output.humanize_bytes(int(done / max(now - self.start, 1e-6)))}/s"
        if total:
            pct = 100 * done / total
            bar = "#" * int(30 * pct / 100)
            line = f"[{bar:<30}] {pct:3.0f}% {output.humanize_bytes(done)} / " \
                   f"{output.humanize_bytes(total)}, {rate}"
        else:
            line = f"{output.humanize_bytes(done)} received, {rate}"
        self.stream.write(f"\r{line} ")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def save(endpoint: str, path: Path, progress: Progress) -> int:
    """Stream Maintenance.Snapshot into ``path`` (via ``path.part``, fsynced, renamed as
    etcdctl does); check the sha256 trailer on the way. Returns the file's size."""
    c = options.client()
    part = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    size, total, first = 0, 0, True
    tail = b""  # the newest 32 bytes: the sha256 trailer once the stream ends
    # Like etcdctl, the stream has no deadline unless --command-timeout was given (a large
    # store takes long); still, no wait here is unbounded.
    timeout = c.command_timeout if "command_timeout" in options.settings().explicit \
        else MAX_TIMEOUT
    try:
        with open(part, "wb") as f:
            try:
                for resp in c.stream("Maintenance", "Snapshot", pb.SnapshotRequest(), endpoint,
                                     timeout):
                    blob = resp.blob
                    if first:  # etcd's remaining_bytes: what follows the first chunk (0 from
                        # a member that does not send it: size unknown)
                        first = False
                        total = len(blob) + resp.remaining_bytes if resp.remaining_bytes else 0
                    f.write(blob)
                    size += len(blob)
                    data = tail + blob
                    digest.update(data[:-dbfile.SHA_SIZE])
                    tail = data[-dbfile.SHA_SIZE:]
                    progress.update(min(size, total) if total else size, total)
            except grpc.RpcError as err:
                raise AdminError(error_text(err), EXIT_INTERRUPTED) from None
            if not dbfile.has_checksum(size):
                raise AdminError(f"sha256 checksum not found [bytes: {size}]", EXIT_INTERRUPTED)
            if tail != digest.digest():
                raise AdminError("snapshot sha256 mismatch: the stream was damaged",
                                 EXIT_INTERRUPTED)
            f.flush()
            os.fsync(f.fileno())
        progress.update(size - dbfile.SHA_SIZE, size - dbfile.SHA_SIZE, final=True)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return size


@snapshot.command("save")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@options.global_options()
def snapshot_save(file: Path) -> None:
    """Stream a backup of one member (a single --endpoints) into FILE."""
    eps = options.client().endpoints
    if len(eps) != 1:
        raise AdminError(f"snapshot must be requested to one selected node, not multiple "
                         f"[{' '.join(eps)}]", EXIT_INTERRUPTED)
    save(eps[0], file, Progress(sys.stderr, sys.stderr.isatty()))
    click.echo(f"Snapshot saved at {file}")


@snapshot.command("status")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@options.global_options()
def snapshot_status(file: Path) -> None:
    """Hash, revision, total keys and size of the backup FILE (from shardkv or etcd)."""
    s = dbfile.status(file)
    fmt = options.write_out()
    if fmt == "json":
        output.print_json(s.as_json())
        return
    row = [f"{s.hash:x}", str(s.revision), str(s.total_key), output.humanize_bytes(s.total_size)]
    if fmt == "table":
        click.echo(output.table(["hash", "revision", "total keys", "total size"], [row]))
    else:
        click.echo(", ".join(row))


@snapshot.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="the new member's data dir [default: NAME.etcd]")
@click.option("--name", default="default", show_default=True, help="the new member's name")
@click.option("--initial-cluster", help="the new cluster [default: NAME=http://localhost:2380]")
@click.option("--initial-cluster-token", default="etcd-cluster", show_default=True)
@click.option("--initial-advertise-peer-urls", default="http://localhost:2380",
              show_default=True)
@click.option("--skip-hash-check", is_flag=True,
              help="restore a db file without a sha256 trailer (copied from a data dir)")
@options.global_options()
def snapshot_restore(file: Path, data_dir: Path | None, name: str, initial_cluster: str | None,
                     initial_cluster_token: str, initial_advertise_peer_urls: str,
                     skip_hash_check: bool) -> None:
    """Build a new member's data dir from FILE, as `etcdctl snapshot restore` does: start
    shardkv-node with the same --name/--initial-* flags on --data-dir and it serves FILE's keys
    as a member of a new cluster (restore each member of it from the same FILE)."""
    if not name:
        raise AdminError("--name must not be empty", EXIT_BAD_ARGS)
    r = restore.restore(file, data_dir or Path(f"{name}.etcd"), name,
                        initial_cluster or f"{name}=http://localhost:2380", initial_cluster_token,
                        initial_advertise_peer_urls, skip_hash_check)
    if options.write_out() == "json":
        output.print_json({"dataDir": str(r.data_dir), "memberID": r.member_id,
                           "clusterID": r.cluster_id, "revisions": r.revisions,
                           "dbSize": r.size})
    else:
        click.echo(f"Restored {file} into {r.data_dir}: member {r.member_id:x} of cluster "
                   f"{r.cluster_id:x}, {r.revisions} revisions, "
                   f"{output.humanize_bytes(r.size)} backend")
