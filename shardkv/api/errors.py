"""etcd v3 server errors, as etcd 3.4 puts them on the wire.

etcd clients (``clientv3``, ``etcdctl``) recognise server errors by their gRPC
status *message* (``rpctypes.Error`` looks the message up in a table) and act on
the status *code* (e.g. retrying UNAVAILABLE). Both must therefore match etcd
3.4's ``etcdserver/api/v3rpc/rpctypes/error.go`` exactly; this module is that
table.

Usage in a ``grpc.aio`` servicer::

    from shardkv.api import errors

    async def Range(self, request, context):
        if request.revision and request.revision < compacted:
            await errors.abort(context, errors.ErrCompacted)   # raises
        ...

or raise from lower layers and let a decorator translate::

    @errors.etcd_errors
    async def Put(self, request, context):
        raise errors.ErrNoSpace

Anything that is not an :class:`EtcdError` is reported like etcd's
``togRPCError`` does for unmapped errors: UNKNOWN with ``str(exc)``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, NoReturn

import grpc

__all__ = [
    "EtcdError",
    "ERRORS",
    "abort",
    "abort_sync",
    "etcd_errors",
    "from_message",
    "from_rpc_error",
    "to_status",
    "METADATA_REQUIRE_LEADER_KEY",
    "METADATA_HAS_LEADER",
    "METADATA_CLIENT_API_VERSION_KEY",
    "TOKEN_FIELD_NAME_GRPC",
    "TOKEN_FIELD_NAME_SWAGGER",
]

_C = grpc.StatusCode


class EtcdError(Exception):
    """An etcd server error: a gRPC status code plus etcd's exact message.

    Instances compare equal by (code, message), so an error rebuilt from a
    received status equals the module constant.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"EtcdError({self.code.name}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EtcdError):
            return NotImplemented
        return self.code == other.code and self.message == other.message

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __reduce__(self):
        return (EtcdError, (self.code, self.message))

    async def abort(self, context: grpc.aio.ServicerContext) -> NoReturn:
        """End the RPC on a ``grpc.aio`` context with this status (raises)."""
        await context.abort(self.code, self.message)
        raise AssertionError("unreachable: context.abort returned")  # pragma: no cover

    def abort_sync(self, context: grpc.ServicerContext) -> NoReturn:
        """End the RPC on a synchronous ``grpc`` context with this status (raises)."""
        context.abort(self.code, self.message)
        raise AssertionError("unreachable: context.abort returned")  # pragma: no cover


def _e(code: grpc.StatusCode, message: str) -> EtcdError:
    return EtcdError(code, message)


# --- server-side errors of etcd 3.4 (rpctypes.ErrGRPC*; client names rpctypes.Err*) ---

# Request validation / KV
ErrEmptyKey = _e(_C.INVALID_ARGUMENT, "etcdserver: key is not provided")
ErrKeyNotFound = _e(_C.INVALID_ARGUMENT, "etcdserver: key not found")
ErrValueProvided = _e(_C.INVALID_ARGUMENT, "etcdserver: value is provided")
ErrLeaseProvided = _e(_C.INVALID_ARGUMENT, "etcdserver: lease is provided")
ErrTooManyOps = _e(_C.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
ErrDuplicateKey = _e(_C.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
ErrCompacted = _e(_C.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
ErrFutureRev = _e(_C.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
ErrNoSpace = _e(_C.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")

# Lease
ErrLeaseNotFound = _e(_C.NOT_FOUND, "etcdserver: requested lease not found")
ErrLeaseExist = _e(_C.FAILED_PRECONDITION, "etcdserver: lease already exists")
ErrLeaseTTLTooLarge = _e(_C.OUT_OF_RANGE, "etcdserver: too large lease TTL")

# Watch (server-side only; not in etcd's errStringToError table)
ErrWatchCanceled = _e(_C.CANCELLED, "etcdserver: watch canceled")

# Membership
ErrMemberExist = _e(_C.FAILED_PRECONDITION, "etcdserver: member ID already exist")
ErrPeerURLExist = _e(_C.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
ErrMemberNotEnoughStarted = _e(
    _C.FAILED_PRECONDITION,
    "etcdserver: re-configuration failed due to not enough started members",
)
ErrMemberBadURLs = _e(_C.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid")
ErrMemberNotFound = _e(_C.NOT_FOUND, "etcdserver: member not found")
ErrMemberNotLearner = _e(_C.FAILED_PRECONDITION, "etcdserver: can only promote a learner member")
ErrMemberLearnerNotReady = _e(
    _C.FAILED_PRECONDITION,
    "etcdserver: can only promote a learner member which is in sync with leader",
)
ErrLearnerNotReady = ErrMemberLearnerNotReady  # server-side name (ErrGRPCLearnerNotReady)
ErrTooManyLearners = _e(_C.FAILED_PRECONDITION, "etcdserver: too many learner members in cluster")

# Request limits
ErrRequestTooLarge = _e(_C.INVALID_ARGUMENT, "etcdserver: request is too large")
ErrTooManyRequests = _e(_C.RESOURCE_EXHAUSTED, "etcdserver: too many requests")

# Auth
ErrRootUserNotExist = _e(_C.FAILED_PRECONDITION, "etcdserver: root user does not exist")
ErrRootRoleNotExist = _e(_C.FAILED_PRECONDITION, "etcdserver: root user does not have root role")
ErrUserAlreadyExist = _e(_C.FAILED_PRECONDITION, "etcdserver: user name already exists")
ErrUserEmpty = _e(_C.INVALID_ARGUMENT, "etcdserver: user name is empty")
ErrUserNotFound = _e(_C.FAILED_PRECONDITION, "etcdserver: user name not found")
ErrRoleAlreadyExist = _e(_C.FAILED_PRECONDITION, "etcdserver: role name already exists")
ErrRoleNotFound = _e(_C.FAILED_PRECONDITION, "etcdserver: role name not found")
ErrRoleEmpty = _e(_C.INVALID_ARGUMENT, "etcdserver: role name is empty")
ErrAuthFailed = _e(
    _C.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password"
)
ErrPermissionDenied = _e(_C.PERMISSION_DENIED, "etcdserver: permission denied")
ErrRoleNotGranted = _e(_C.FAILED_PRECONDITION, "etcdserver: role is not granted to the user")
ErrPermissionNotGranted = _e(
    _C.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role"
)
ErrAuthNotEnabled = _e(_C.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
ErrInvalidAuthToken = _e(_C.UNAUTHENTICATED, "etcdserver: invalid auth token")
ErrInvalidAuthMgmt = _e(_C.INVALID_ARGUMENT, "etcdserver: invalid auth management")
ErrAuthOldRevision = _e(_C.INVALID_ARGUMENT, "etcdserver: revision of auth store is old")

# Cluster health / leadership / timeouts
ErrNoLeader = _e(_C.UNAVAILABLE, "etcdserver: no leader")
ErrNotLeader = _e(_C.FAILED_PRECONDITION, "etcdserver: not leader")
ErrLeaderChanged = _e(_C.UNAVAILABLE, "etcdserver: leader changed")
ErrNotCapable = _e(_C.UNAVAILABLE, "etcdserver: not capable")
ErrStopped = _e(_C.UNAVAILABLE, "etcdserver: server stopped")
ErrTimeout = _e(_C.UNAVAILABLE, "etcdserver: request timed out")
ErrTimeoutDueToLeaderFail = _e(
    _C.UNAVAILABLE, "etcdserver: request timed out, possibly due to previous leader failure"
)
ErrTimeoutDueToConnectionLost = _e(
    _C.UNAVAILABLE, "etcdserver: request timed out, possibly due to connection lost"
)
ErrTimeoutWaitAppliedIndex = _e(
    _C.UNAVAILABLE, "etcdserver: request timed out, waiting for the applied index took too long"
)
ErrUnhealthy = _e(_C.UNAVAILABLE, "etcdserver: unhealthy cluster")
ErrCorrupt = _e(_C.DATA_LOSS, "etcdserver: corrupt cluster")
ErrNotSupportedForLearner = _e(_C.UNAVAILABLE, "etcdserver: rpc not supported for learner")
ErrBadLeaderTransferee = _e(_C.FAILED_PRECONDITION, "etcdserver: bad leader transferee")

# Lock/Election services: etcd returns these plain Go errors through togRPCError's
# fallback, i.e. as UNKNOWN with the error text.
ErrMissingLeaderKey = _e(_C.UNKNOWN, '"leader" field must be provided')
ErrElectionNotLeader = _e(_C.UNKNOWN, "election: not leader")
ErrElectionNoLeader = _e(_C.UNKNOWN, "election: no leader")

# shardkv's answers where etcd 3.4 has none (it crashes; see shardkv.mvcc.errors)
ErrKeyTooLarge = _e(_C.INVALID_ARGUMENT, "etcdserver: key is too large")
ErrUnknownSortTarget = _e(_C.INVALID_ARGUMENT, "etcdserver: unknown sort target")
ErrUnknownAlarmAction = _e(_C.INVALID_ARGUMENT, "etcdserver: unknown alarm action")
ErrAlarmTypeRange = _e(_C.INVALID_ARGUMENT, "etcdserver: alarm type out of range")
ErrApplyFailed = _e(_C.INTERNAL, "etcdserver: request could not be applied")


def _collect() -> dict[str, EtcdError]:
    table: dict[str, EtcdError] = {}
    for name, val in globals().items():
        if name.startswith("Err") and isinstance(val, EtcdError):
            table.setdefault(val.message, val)
    return table


#: Every known error, keyed by its exact message (etcd's errStringToError,
#: plus watch-canceled and the lock/election errors).
ERRORS: dict[str, EtcdError] = _collect()

# --- gRPC metadata keys etcd uses (rpctypes/md.go, metadatafields.go) ---
METADATA_REQUIRE_LEADER_KEY = "hasleader"
METADATA_HAS_LEADER = "true"
METADATA_CLIENT_API_VERSION_KEY = "client-api-version"
TOKEN_FIELD_NAME_GRPC = "token"
TOKEN_FIELD_NAME_SWAGGER = "authorization"


def from_message(message: str) -> EtcdError | None:
    """The known error whose message is exactly ``message``, else None."""
    return ERRORS.get(message)


def from_rpc_error(err: grpc.RpcError) -> EtcdError | None:
    """Client side: the EtcdError a received status denotes (by message, like
    etcd's ``rpctypes.Error``), or None if it is not an etcd server error."""
    details = err.details() if hasattr(err, "details") else None
    return ERRORS.get(details) if details else None


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) to send for ``exc``: its own for an EtcdError, else
    UNKNOWN with ``str(exc)`` (etcd's togRPCError fallback)."""
    if isinstance(exc, EtcdError):
        return exc.code, exc.message
    return _C.UNKNOWN, str(exc)


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """End the current ``grpc.aio`` RPC with ``exc``'s etcd status (raises)."""
    code, message = to_status(exc)
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort returned")  # pragma: no cover


def abort_sync(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the current synchronous-``grpc`` RPC with ``exc``'s etcd status (raises)."""
    code, message = to_status(exc)
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort returned")  # pragma: no cover


def etcd_errors(method: Any) -> Any:
    """Decorate a ``grpc.aio`` servicer method (coroutine or async generator) so
    that an :class:`EtcdError` raised inside it ends the RPC with that status.

    Other exceptions propagate unchanged (grpc reports them as UNKNOWN).
    """
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def gen_wrapper(self, request, context):
            try:
                async for item in method(self, request, context):
                    yield item
            except EtcdError as exc:
                await context.abort(exc.code, exc.message)

        return gen_wrapper

    if not inspect.iscoroutinefunction(method):
        raise TypeError("etcd_errors decorates async servicer methods only")

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except EtcdError as exc:
            await context.abort(exc.code, exc.message)

    return wrapper
