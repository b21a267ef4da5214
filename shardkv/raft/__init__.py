"""Pure Raft consensus: no sockets, no clocks, no disk. See rawnode.RawNode for the host API."""
from .raft import Config, apply_conf_change
from .rawnode import RawNode
from .types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    PersistedState,
    ProposalDropped,
    Ready,
    ReadState,
    Snapshot,
    SnapshotMeta,
    SoftState,
    StateRole,
)

__all__ = [
    "NONE", "Config", "ConfChange", "ConfChangeType", "ConfState", "Entry", "EntryType", "HardState",
    "Message", "MessageType", "PersistedState", "ProposalDropped", "RawNode", "ReadState", "Ready",
    "Snapshot", "SnapshotMeta", "SoftState", "StateRole", "apply_conf_change",
]
