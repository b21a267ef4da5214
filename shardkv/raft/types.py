"""Values that cross the Raft core's boundary: log entries, messages, persisted state, Ready.

Entries, messages, hard state and snapshots are msgspec Structs; their msgspec encoding
(``encode``/``decode_*`` below) is both the on-wire format between peers and the on-disk format
of the Raft log. Fields are append-only: never renumber or reorder them.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import msgspec

NONE = 0  # "no node": node ids are positive integers, as etcd's member ids are non-zero.


class MessageType(enum.IntEnum):
    APP = 1  # leader -> follower: entries (possibly none) after (log_term, index)
    APP_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9  # leader -> follower: install this snapshot
    READ_INDEX = 10  # follower -> leader: confirm leadership and tell me your commit index
    READ_INDEX_RESP = 11
    TIMEOUT_NOW = 12  # leader -> transfer target: campaign now, ignoring leases
    PROP = 13  # follower -> leader: forwarded proposals
    TRANSFER_LEADER = 14  # follower -> leader: forwarded leadership transfer request


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class ConfChangeType(enum.IntEnum):
    ADD_NODE = 0  # add a voter, or promote a learner to voter
    REMOVE_NODE = 1
    ADD_LEARNER = 2  # add a non-voting member (or demote a voter)


class StateRole(enum.IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


class Entry(msgspec.Struct, array_like=True, frozen=True):
    term: int
    index: int
    type: int = EntryType.NORMAL
    data: bytes = b""


class HardState(msgspec.Struct, array_like=True, frozen=True):
    term: int = 0
    vote: int = NONE
    commit: int = 0


class ConfState(msgspec.Struct, array_like=True, frozen=True):
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


class ConfChange(msgspec.Struct, array_like=True, frozen=True):
    type: int
    node_id: int
    context: bytes = b""


class SnapshotMeta(msgspec.Struct, array_like=True, frozen=True):
    index: int = 0
    term: int = 0
    conf_state: ConfState = ConfState()


class Snapshot(msgspec.Struct, array_like=True, frozen=True):
    """State machine image as of ``meta.index``. ``data`` may be empty when the host streams
    the image out of band (as etcd does for large databases)."""

    meta: SnapshotMeta = SnapshotMeta()
    data: bytes = b""


class Message(msgspec.Struct, array_like=True, frozen=True):
    type: int
    to: int
    frm: int
    term: int = 0
    log_term: int = 0  # APP: term of entry at `index`; VOTE: term of candidate's last entry
    index: int = 0  # APP: index preceding `entries`; VOTE: candidate's last index
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0  # APP_RESP reject: follower's hint index for fast backtracking
    snapshot: Snapshot | None = None
    context: bytes = b""  # HEARTBEAT(+RESP)/READ_INDEX: read request id
    force: bool = False  # VOTE/PRE_VOTE from a leadership transfer: ignore leader leases
    # APP without entries (it only moves the commit index) whose `index` the leader knows the
    # receiver holds, or will hear it holds from the answer to an earlier append: accepted
    # without an APP_RESP, which would tell the leader nothing new (a rejection is answered).
    quiet: bool = False
    # APP_RESP/HEARTBEAT_RESP: the sender needs no prompt notice of new commits (nobody waits
    # on its state machine); it learns them from the next append, a heartbeat, or
    # ``flush_commit_notices``.
    lazy: bool = False


class ReadState(msgspec.Struct, frozen=True):
    """A read request ``context`` may be served once the host has applied ``index``."""

    index: int
    context: bytes


class SoftState(msgspec.Struct, frozen=True):
    lead: int
    role: StateRole


@dataclass
class Ready:
    """What the host must do, in this order: persist ``hard_state``, ``entries`` and
    ``snapshot`` (one synced write), then send ``messages``, then apply ``snapshot`` and
    ``committed_entries`` to the state machine, then call ``RawNode.advance(ready)``.

    A leader may send ``messages`` before its write is durable (in parallel with it, as etcd
    does): it counts its own log towards a commit only once ``advance`` says it is synced.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)  # replaces the log from entries[0].index
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)

    @property
    def must_sync(self) -> bool:
        return bool(self.hard_state is not None or self.entries or self.snapshot is not None)


@dataclass
class PersistedState:
    """Everything a restarted node gets back from its disk: what was synced, nothing more."""

    hard_state: HardState = HardState()
    snapshot: Snapshot = Snapshot()
    entries: list[Entry] = field(default_factory=list)  # after snapshot.meta.index, contiguous


class ProposalDropped(Exception):
    """The proposal was not appended (no leader known, transfer in progress, conf change pending,
    or this node is not a member). The host may retry later; nothing was written."""


_encoder = msgspec.msgpack.Encoder()
_message_decoder = msgspec.msgpack.Decoder(Message)
_entry_decoder = msgspec.msgpack.Decoder(Entry)
_hard_state_decoder = msgspec.msgpack.Decoder(HardState)
_snapshot_meta_decoder = msgspec.msgpack.Decoder(SnapshotMeta)
_conf_change_decoder = msgspec.msgpack.Decoder(ConfChange)
_messages_decoder = msgspec.msgpack.Decoder(list[Message])

encode = _encoder.encode
decode_message = _message_decoder.decode
decode_messages = _messages_decoder.decode
decode_entry = _entry_decoder.decode
decode_hard_state = _hard_state_decoder.decode
decode_snapshot_meta = _snapshot_meta_decoder.decode
decode_conf_change = _conf_change_decoder.decode
