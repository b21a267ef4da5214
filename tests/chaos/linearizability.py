"""A linearizability checker for histories of register operations (get / put / compare-and-set).

Wing & Gong's search with Lowe's just-in-time linearization and memoization of
(linearized set, state) pairs, as Porcupine does it, over each key separately (registers on
different keys are independent, so a history is linearizable iff each key's sub-history is:
P-compositionality). An operation that never completed (client timeout: result unknown) has an
infinite return time: it may take effect at any point after its invocation, or never.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

GET, PUT, CAS = "get", "put", "cas"


@dataclass(frozen=True)
class Op:
    """One client operation. ``output`` is None for an operation whose result is unknown.

    get: input None, output = value read (None for a missing key)
    put: input value, output True
    cas: input (expected, new), output True if it swapped, False if not
    """

    client: int
    key: Any
    kind: str
    input: Any
    output: Any
    invoke: float
    complete: float = math.inf  # inf: never answered


def step(state: Any, op: Op) -> tuple[bool, Any]:
    """The sequential register: can ``op`` return its output in ``state``, and the next state."""
    if op.kind == GET:
        return (op.output is None and op.complete == math.inf) or op.output == state, state
    if op.kind == PUT:
        return True, op.input
    expected, new = op.input
    if op.output is None:  # unknown outcome: it may have swapped or not
        return True, new if state == expected else state
    if op.output:
        return state == expected, new
    return state != expected, state


@dataclass
class _Entry:
    op_id: int
    is_call: bool
    time: float
    match: "_Entry | None" = None
    prev: "_Entry | None" = None
    next: "_Entry | None" = None


@dataclass
class Result:
    ok: bool
    key: Any = None
    ops_checked: int = 0
    # on failure: the longest linearizable order found, and the operations none of which
    # could come next (the smallest piece of history that shows the anomaly)
    linearized: list[Op] = field(default_factory=list)
    stuck: list[Op] = field(default_factory=list)


def _entries(ops: list[Op]) -> _Entry:
    """A doubly linked list of call/return events in time order, behind a sentinel head.
    At equal times calls come first: touching operations count as concurrent (permissive)."""
    events = []
    for i, op in enumerate(ops):
        call = _Entry(i, True, op.invoke)
        ret = _Entry(i, False, op.complete)
        call.match = ret
        events += [call, ret]
    events.sort(key=lambda e: (e.time, not e.is_call, e.op_id))
    head = _Entry(-1, False, -math.inf)
    prev = head
    for e in events:
        prev.next, e.prev = e, prev
        prev = e
    return head


def _lift(e: _Entry) -> None:
    e.prev.next = e.next
    if e.next:
        e.next.prev = e.prev
    m = e.match
    m.prev.next = m.next
    if m.next:
        m.next.prev = m.prev


def _unlift(e: _Entry) -> None:
    m = e.match
    m.prev.next = m
    if m.next:
        m.next.prev = m
    e.prev.next = e
    if e.next:
        e.next.prev = e


def check_key(ops: list[Op], initial: Any = None) -> Result:
    """Is this one key's history linearizable?"""
    head = _entries(ops)
    state = initial
    linearized = 0
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[_Entry, Any]] = []
    best: list[int] = []
    best_stuck: list[int] = []
    e = head.next
    while head.next is not None:
        if e.is_call:
            ok, new_state = step(state, ops[e.op_id])
            bit = 1 << e.op_id
            if ok and (linearized | bit, new_state) not in cache:
                cache.add((linearized | bit, new_state))
                stack.append((e, state))
                state, linearized = new_state, linearized | bit
                _lift(e)
                e = head.next
            else:
                e = e.next
            continue
        # a return: the operation it closes could not be linearized before it -> backtrack
        if len(stack) > len(best):
            best = [s[0].op_id for s in stack]
            best_stuck = _pending(head, e)
        if not stack:
            return Result(False, ops_checked=len(ops), linearized=[ops[i] for i in best],
                          stuck=[ops[i] for i in best_stuck or _pending(head, e)])
        top, state = stack.pop()
        linearized &= ~(1 << top.op_id)
        _unlift(top)
        e = top.next
    return Result(True, ops_checked=len(ops))


def _pending(head: _Entry, ret: _Entry) -> list[int]:
    """Operations invoked before ``ret`` and not yet linearized: the candidates that failed."""
    out = []
    e = head.next
    while e is not None and e is not ret.next:
        if e.is_call:
            out.append(e.op_id)
        e = e.next
    return out


def check(ops: list[Op], initial: Any = None) -> Result:
    """Check a whole history, key by key. Returns the first failing key's result."""
    by_key: dict[Any, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    total = 0
    for key, key_ops in sorted(by_key.items(), key=lambda kv: repr(kv[0])):
        result = check_key(key_ops, initial)
        total += result.ops_checked
        if not result.ok:
            result.key = key
            return result
    return Result(True, ops_checked=total)


def describe(result: Result) -> str:
    """A human-readable account of a failure: the order that worked, then the dead end."""
    if result.ok:
        return f"linearizable ({result.ops_checked} operations)"
    lines = [f"NOT linearizable on key {result.key!r}; longest valid order found:"]
    lines += [f"  {_fmt(op)}" for op in result.linearized[-10:]]
    lines.append("then none of these can take effect next:")
    lines += [f"  {_fmt(op)}" for op in result.stuck]
    return "\n".join(lines)


def _fmt(op: Op) -> str:
    done = "never" if op.complete == math.inf else f"{op.complete:.6f}"
    return f"client {op.client} {op.kind}({op.input!r}) -> {op.output!r}  [{op.invoke:.6f} .. {done}]"
