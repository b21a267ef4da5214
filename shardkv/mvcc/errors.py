"""One exception class per etcd error the storage engine can return.

``str(exc)`` is etcd v3.4's exact client-visible text (the gRPC status message of
``rpctypes``), so the node can turn any of them into the wire error with
``shardkv.api.errors.from_message(str(exc))``. For the two mvcc errors this is the mvcc text
("mvcc: required revision ...") behind etcd's "etcdserver: " prefix, as clients receive it.
"""
from __future__ import annotations


class EtcdError(Exception):
    """Base class; ``message`` is etcd's exact text."""

    message = "etcdserver: unknown error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)


class CompactedError(EtcdError):
    message = "etcdserver: mvcc: required revision has been compacted"


class FutureRevisionError(EtcdError):
    message = "etcdserver: mvcc: required revision is a future revision"


class EmptyKeyError(EtcdError):
    message = "etcdserver: key is not provided"


class KeyTooLargeError(EtcdError):
    """A key longer than the store can index (LMDB keys hold at most 511 bytes, the lease index
    puts an 8-byte ID before the key). etcd keeps its key index in memory and takes keys up to
    the request size; shardkv refuses longer keys with this error rather than fail applying."""

    message = "etcdserver: key is too large"


class KeyNotFoundError(EtcdError):
    message = "etcdserver: key not found"


class ValueProvidedError(EtcdError):
    message = "etcdserver: value is provided"


class LeaseProvidedError(EtcdError):
    message = "etcdserver: lease is provided"


class TooManyOpsError(EtcdError):
    message = "etcdserver: too many operations in txn request"


class DuplicateKeyError(EtcdError):
    message = "etcdserver: duplicate key given in txn request"


class NoSpaceError(EtcdError):
    message = "etcdserver: mvcc: database space exceeded"


class CorruptError(EtcdError):
    message = "etcdserver: corrupt cluster"


class LeaseNotFoundError(EtcdError):
    message = "etcdserver: requested lease not found"


class LeaseExistsError(EtcdError):
    message = "etcdserver: lease already exists"


class LeaseTTLTooLargeError(EtcdError):
    message = "etcdserver: too large lease TTL"


class SortTargetError(EtcdError):
    """A sort on a target etcd does not know: etcd 3.4 itself crashes on it (a nil sorter);
    shardkv refuses it."""

    message = "etcdserver: unknown sort target"


class AlarmActionError(EtcdError):
    """An alarm request with an action etcd does not know: etcd 3.4 crashes answering it (a
    nil response); shardkv refuses it."""

    message = "etcdserver: unknown alarm action"


class AlarmTypeError(EtcdError):
    """An alarm type the store cannot hold (it keeps one byte; etcd's types are 0-2)."""

    message = "etcdserver: alarm type out of range"


class ApplyFailedError(EtcdError):
    """A committed entry that could not be applied (undecodable, or a bug met applying it):
    every member answers it with this and changes nothing, instead of stopping."""

    message = "etcdserver: request could not be applied"


class NotPrimaryError(EtcdError):
    """Keep-alive on a lessor that is not the leader's (etcd's lease.ErrNotPrimary)."""

    message = "not a primary lessor"


class SnapshotChecksumError(EtcdError):
    """A snapshot stream whose trailing sha256 does not match its body."""

    message = "snapshot: sha256 checksum mismatch"
