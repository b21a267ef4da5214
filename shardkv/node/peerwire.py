"""What crosses the peer port, packed and checked: Raft message batches cut into bounded
frames, and the checks every received Raft message passes before it reaches Raft.

Everything a peer sends is hostile until checked. The checks refuse whatever would make the
Raft core raise (an append whose entries do not follow its index, a garbage conf change entry,
a snapshot message without a snapshot, ...) or hold values no member produces (a term of
zero on a message that is not a forwarded request, negative or overflowing numbers, a
message for another member or claiming another sender). They hold no state: a well-formed
message forged by a stranger (an append, a vote, a timeout) passes them; keeping strangers out
needs peer authentication.
"""
from __future__ import annotations

from collections.abc import Collection

import msgspec

from shardkv.raft.log import entries_size
from shardkv.raft.types import (
    ConfChangeType,
    EntryType,
    Message,
    MessageType as MT,
    decode_conf_change,
    decode_messages,
    encode,
)

# A legitimate frame: one Raft append (at most max-size-per-msg of entries, or one entry of up
# to max-request-bytes), one snapshot chunk, or a batch of small messages; plus this much for
# msgpack framing and the message's other fields.
FRAME_OVERHEAD = 64 * 1024
# Messages in one frame. A Ready holds at most max-inflight appends and as many answers for one
# peer; pack() cuts a longer batch. Bounds the Raft steps one frame can cost.
MAX_MESSAGES_PER_FRAME = 1024
MAX_CONTEXT_BYTES = 64  # read request ids are 8 bytes
MAX_NUMBER = 2**63 - 1  # terms and indexes; leaves room to count up from any accepted value
MAX_NODE_ID = 2**64 - 1
FORWARDED = frozenset({MT.PROP, MT.READ_INDEX, MT.TRANSFER_LEADER})  # carry term 0
_TYPES = frozenset(MT)
_ENTRY_TYPES = frozenset(EntryType)
_CONF_CHANGE_TYPES = frozenset(ConfChangeType)


def frame_budget(max_request_bytes: int, max_size_per_msg: int, chunk_bytes: int) -> int:
    """The size a sender keeps each frame under (where one message allows)."""
    return max(max_request_bytes, max_size_per_msg, chunk_bytes) + FRAME_OVERHEAD


def max_frame_bytes(budget: int) -> int:
    """The largest frame a receiver takes (ZMQ_MAXMSGSIZE): twice the budget, so a peer whose
    --max-request-bytes is up to about twice ours is still heard."""
    return 2 * budget


# ---------------------------------------------------------------------------- sending

def pack(batch: list[Message], budget: int) -> list[bytes]:
    """``batch`` as one or more frames, each a msgpack array of messages of at most ``budget``
    bytes and MAX_MESSAGES_PER_FRAME messages (one message bigger than that alone gets a frame
    of its own). A forwarded proposal too big for a frame is cut into several: its entries are
    independent requests, appended in the same order."""
    data = encode(batch)
    if len(data) <= budget and len(batch) <= MAX_MESSAGES_PER_FRAME:
        return [data]  # the common case, encoded once
    frames: list[bytes] = []
    group: list[Message] = []
    size = 0
    for m in _cut_proposals(batch, budget):
        n = len(encode(m))
        if group and (size + n > budget or len(group) == MAX_MESSAGES_PER_FRAME):
            frames.append(encode(group))
            group, size = [], 0
        group.append(m)
        size += n
    if group:
        frames.append(encode(group))
    return frames


def _cut_proposals(batch: list[Message], budget: int) -> list[Message]:
    out = []
    room = budget - FRAME_OVERHEAD // 2
    for m in batch:
        if m.type != MT.PROP or len(m.entries) < 2 or entries_size(m.entries) <= room:
            out.append(m)
            continue
        part: list = []
        size = 0
        for e in m.entries:
            n = len(e.data) + 24
            if part and size + n > room:
                out.append(msgspec.structs.replace(m, entries=tuple(part)))
                part, size = [], 0
            part.append(e)
            size += n
        out.append(msgspec.structs.replace(m, entries=tuple(part)))
    return out


# ---------------------------------------------------------------------------- receiving

def unpack(frames: list[bytes]) -> tuple[list[Message], str | None]:
    """The messages of a batch's frames, or ([], reason) if any frame is not a msgpack array of
    at most MAX_MESSAGES_PER_FRAME well-typed messages (the count is read from the array header
    before anything is decoded)."""
    out: list[Message] = []
    for frame in frames:
        count = _array_length(frame)
        if count is None:
            return [], "malformed"
        if count > MAX_MESSAGES_PER_FRAME:
            return [], "too_many_messages"
        try:
            out.extend(decode_messages(frame))
        except msgspec.DecodeError:  # ValidationError (wrong types) included
            return [], "malformed"
    return out, None


def _array_length(frame: bytes) -> int | None:
    """The element count of the msgpack array ``frame`` starts with, or None."""
    if not frame:
        return None
    b = frame[0]
    if 0x90 <= b <= 0x9F:
        return b & 0x0F
    if b == 0xDC and len(frame) >= 3:
        return int.from_bytes(frame[1:3], "big")
    if b == 0xDD and len(frame) >= 5:
        return int.from_bytes(frame[1:5], "big")
    return None


def check(m: Message, me: int, sender: int, members: Collection[int]) -> str | None:
    """None if ``m``, received from ``sender``, may be stepped into this member's (``me``) Raft;
    else the reason to refuse it. ``members``: the voters and learners of the configuration
    (a follower relays a forwarded request from another member, keeping its sender)."""
    t = m.type
    if t not in _TYPES:
        return "bad_type"
    if m.to != me:
        return "wrong_recipient"
    if m.frm != sender and not (t in FORWARDED and m.frm in members and m.frm != me):
        return "wrong_sender"
    if (m.term == 0) != (t in FORWARDED):
        return "bad_term"  # term 0 means "local request": it would skip every term check
    for n in (m.term, m.log_term, m.commit, m.reject_hint):
        if not 0 <= n <= MAX_NUMBER:
            return "bad_number"
    if not 0 <= m.index <= (MAX_NODE_ID if t == MT.TRANSFER_LEADER else MAX_NUMBER):
        return "bad_number"  # a transfer's index is the target member's id
    if len(m.context) > MAX_CONTEXT_BYTES:
        return "bad_context"
    if (m.snapshot is not None) != (t == MT.SNAPSHOT):
        return "bad_snapshot"
    if t == MT.APP:
        return _check_append(m)
    if t == MT.PROP:
        return _check_proposal(m)
    if m.entries:
        return "bad_entries"
    if t == MT.SNAPSHOT:
        return _check_snapshot(m)
    return None


def _check_append(m: Message) -> str | None:
    """Entries follow ``index`` one by one; terms never decrease, from ``log_term`` up to the
    leader's term (the log's invariant); conf change entries decode. (On every append a
    follower takes: kept to a few comparisons per entry.)"""
    if m.index + len(m.entries) > MAX_NUMBER:
        return "bad_number"
    index, prev, top = m.index, max(m.log_term, 1), m.term
    for e in m.entries:
        index += 1
        term = e.term
        if e.index != index or term < prev or term > top:
            return "bad_entries"
        prev = term
        if e.type != EntryType.NORMAL:
            reason = _check_entry_type(e.type, e.data)
            if reason:
                return reason
    return None


def _check_proposal(m: Message) -> str | None:
    """Forwarded proposals: entries without term or index, normal ones (the leader appends
    their data as normal entries; membership changes are proposed on the leader only)."""
    if not m.entries:
        return "bad_entries"
    for e in m.entries:
        if e.term != 0 or e.index != 0 or e.type != EntryType.NORMAL:
            return "bad_entries"
    return None


def _check_entry_type(entry_type: int, data: bytes) -> str | None:
    if entry_type not in _ENTRY_TYPES:
        return "bad_entries"
    if entry_type == EntryType.CONF_CHANGE:
        # Raft decodes these as soon as they are in its log (and again at every restart).
        try:
            cc = decode_conf_change(data)
        except msgspec.DecodeError:
            return "bad_conf_change"
        if cc.type not in _CONF_CHANGE_TYPES or not 0 < cc.node_id <= MAX_NODE_ID:
            return "bad_conf_change"
    return None


def _check_snapshot(m: Message) -> str | None:
    meta = m.snapshot.meta
    if m.snapshot.data:
        return "bad_snapshot"  # the store image travels in frames of its own
    if not (1 <= meta.index <= MAX_NUMBER and 1 <= meta.term <= m.term):
        return "bad_snapshot"
    voters, learners = meta.conf_state.voters, meta.conf_state.learners
    if not voters or set(voters) & set(learners):
        return "bad_snapshot"
    if not all(0 < n <= MAX_NODE_ID for n in (*voters, *learners)):
        return "bad_snapshot"
    return None
