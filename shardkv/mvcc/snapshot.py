"""State-machine snapshots: a point-in-time copy of the whole LMDB database, streamed in chunks
with a sha256 of the body appended (as etcd appends one to its snapshot db), restorable into a
new data directory, or received (verified) into one that ``Store.replace_with`` swaps in.

Stream format: the LMDB ``data.mdb`` bytes (compacted copy), then 32 bytes of sha256 over them.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from shardkv.mvcc.errors import SnapshotChecksumError
from shardkv.mvcc.store import Store

CHECKSUM_LEN = 32
DEFAULT_CHUNK_SIZE = 1024 * 1024
Source = Iterable[bytes] | str | os.PathLike[str]  # chunks, or a file holding the stream


class StoreSnapshot:
    """A consistent copy taken from one LMDB read transaction: writers keep going while it is
    made. ``applied_index`` is the last Raft entry it contains (the Raft snapshot's index)."""

    def __init__(self, store: Store, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        fd, name = tempfile.mkstemp(prefix="snapshot-", dir=store.path.parent)
        self._path = Path(name)
        try:
            self.applied_index = store.copy_to(fd)
        finally:
            os.close(fd)
        self.size = self._path.stat().st_size + CHECKSUM_LEN
        self._chunk_size = chunk_size

    def chunks(self) -> Iterator[bytes]:
        """The stream, once; the temporary copy is removed when it is exhausted or closed."""
        digest = hashlib.sha256()
        try:
            with open(self._path, "rb") as f:
                while chunk := f.read(self._chunk_size):
                    digest.update(chunk)
                    yield chunk
            yield digest.digest()
        finally:
            self.discard()

    def discard(self) -> None:
        self._path.unlink(missing_ok=True)


def _stream_of(source: Source) -> Iterable[bytes]:
    if isinstance(source, (str, os.PathLike)):
        def read_file() -> Iterator[bytes]:
            with open(source, "rb") as f:
                while chunk := f.read(DEFAULT_CHUNK_SIZE):
                    yield chunk
        return read_file()
    return source


def _write_verified(source: Source, target: Path) -> None:
    """Write the body to ``target``; raise SnapshotChecksumError (removing it) if the trailing
    sha256 does not match. The last 32 bytes seen are held back since they may be the digest."""
    digest = hashlib.sha256()
    tail = b""
    with open(target, "wb") as f:
        for chunk in _stream_of(source):
            data = tail + chunk
            body, tail = data[:-CHECKSUM_LEN], data[-CHECKSUM_LEN:]
            digest.update(body)
            f.write(body)
        f.flush()
        os.fsync(f.fileno())
    if len(tail) != CHECKSUM_LEN or digest.digest() != tail:
        target.unlink()
        raise SnapshotChecksumError()


def restore(source: Source, data_dir: str | os.PathLike[str]) -> int:
    """Create a new store directory from a snapshot stream (chunks, or a file holding it).
    Returns the applied Raft index the snapshot contains."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if (data_dir / "data.mdb").exists():
        raise FileExistsError(f"{data_dir} already holds a database")
    _write_verified(source, data_dir / "data.mdb")
    with Store(data_dir) as store:
        return store.consistent_index


class InvalidSnapshot(Exception):
    """A received snapshot body is not a store (its checksum may match: it proves no origin)."""


def receive(source: Source, directory: Path, map_size: int) -> int:
    """Make ``directory`` (new) hold a received snapshot as ``data.mdb``, ready for
    ``Store.replace_with``: verify the stream's checksum, then that the body opens as a store.
    Returns the applied index the body contains. Raises SnapshotChecksumError or
    InvalidSnapshot (removing ``directory``). Runs off the loop: it reads the whole body."""
    directory.mkdir()
    try:
        _write_verified(source, directory / "data.mdb")
        try:
            with Store(directory, map_size=map_size) as store:
                return store.consistent_index
        except Exception as exc:  # lmdb.Error, or a meta value that does not decode
            raise InvalidSnapshot(f"{type(exc).__name__}: {exc}") from None
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise

