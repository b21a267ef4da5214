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
class Result:
    ok: bool
    key: Any = None
    ops_checked: int = 0
    # on failure: the longest linearizable order found, and the operations none of which
    # could come next (the smallest piece of history that shows the anomaly)
    linearized: list[Op] = field(default_factory=list)
    stuck: list[Op] = field(default_factory=list)
    # the search gave up (``budget`` steps) without deciding: neither a pass nor a violation
    inconclusive: bool = False


DEFAULT_BUDGET = 2_000_000


_UNOBSERVED = ("unobserved value",)  # the state after a write whose value nobody ever saw


def _unobserved_writes(ops: list[Op]) -> tuple[list[Op], dict[int, Any]]:
    """Unknown-outcome writes whose value no operation ever saw (no get returned it, no cas
    expected it) are interchangeable within a class (puts; cas ops with the same expected
    value): each can only turn the state into 'something nobody reads', at any time after its
    invocation. Their value becomes one shared token, and the search only ever places the
    earliest-invoked one of a class not yet placed (symmetry breaking: an order that uses k of
    them can use the k earliest-invoked ones instead). This turns 2^k subsets into k + 1
    counts. Returns the rewritten operations and each such operation's class."""
    observed = {op.output for op in ops if op.kind == GET}
    observed |= {op.input[0] for op in ops if op.kind == CAS}
    out, classes = list(ops), {}
    for i, op in enumerate(ops):
        if op.complete != math.inf:
            continue
        if op.kind == PUT and op.input not in observed:
            out[i] = Op(op.client, op.key, PUT, _UNOBSERVED, None, op.invoke, op.complete)
            classes[i] = (PUT,)
        elif op.kind == CAS and op.input[1] not in observed:
            out[i] = Op(op.client, op.key, CAS, (op.input[0], _UNOBSERVED), None, op.invoke,
                        op.complete)
            classes[i] = (CAS, op.input[0])
    return out, classes


class _Window:
    """Which operations may take effect next, given the ones already placed (``placed``, kept
    along the search path). Answered operations are scanned from the first unplaced one in
    invocation order; unknown-outcome ones (never returning) from a separate short list."""

    def __init__(self, ops: list[Op], classes: dict[int, Any]) -> None:
        self.ops, self.classes = ops, classes
        answered = [i for i, op in enumerate(ops) if op.complete != math.inf]
        self.by_invoke = sorted(answered, key=lambda i: ops[i].invoke)
        self.by_complete = sorted(answered, key=lambda i: ops[i].complete)
        self.unknown = sorted((i for i, op in enumerate(ops) if op.complete == math.inf),
                              key=lambda i: ops[i].invoke)
        self.placed = bytearray(len(ops))

    def candidates(self, lo_inv: int, lo_ret: int) -> tuple[list[int], int, int]:
        """(candidates, first unplaced index in by_invoke, first unplaced in by_complete).
        Candidates: unplaced, invoked no later than the earliest return among the unplaced
        (touching operations count as concurrent); answered ones first, earliest return first;
        unknown ones last (only one per class of interchangeable ones), so the search places an
        operation that may never have happened only when it has to."""
        ops, placed = self.ops, self.placed
        while lo_inv < len(self.by_invoke) and placed[self.by_invoke[lo_inv]]:
            lo_inv += 1
        while lo_ret < len(self.by_complete) and placed[self.by_complete[lo_ret]]:
            lo_ret += 1
        if lo_ret == len(self.by_complete):
            return [], lo_inv, lo_ret
        first_return = ops[self.by_complete[lo_ret]].complete
        cands = []
        for j in range(lo_inv, len(self.by_invoke)):
            i = self.by_invoke[j]
            if ops[i].invoke > first_return:
                break
            if not placed[i]:
                cands.append(i)
        cands.sort(key=lambda i: (ops[i].complete, ops[i].invoke))
        seen_classes = set()
        for i in self.unknown:
            if ops[i].invoke > first_return:
                break
            if placed[i]:
                continue
            if i in self.classes:
                if self.classes[i] in seen_classes:
                    continue
                seen_classes.add(self.classes[i])
            cands.append(i)
        return cands, lo_inv, lo_ret


def check_key(ops: list[Op], initial: Any = None, budget: int = DEFAULT_BUDGET) -> Result:
    """Is this one key's history linearizable? A depth-first search over the orders real time
    allows, memoizing (linearized set, state) pairs (Lowe); done when every answered operation
    is placed (unknown-outcome operations may never have taken effect)."""
    original = ops
    ops, classes = _unobserved_writes(ops)
    window = _Window(ops, classes)
    answered = len(window.by_invoke)
    cands, lo_inv, lo_ret = window.candidates(0, 0)
    # frames: [linearized set, state, answered placed, candidates, next candidate, lo_inv, lo_ret]
    stack = [[0, initial, 0, cands, 0, lo_inv, lo_ret]]
    path: list[int] = []
    best: list[int] = []
    best_stuck: list[int] = cands
    cache = {(0, initial)}
    steps = 0
    while stack:
        frame = stack[-1]
        linearized, state, n_answered, cands, k, lo_inv, lo_ret = frame
        if n_answered == answered:
            return Result(True, ops_checked=len(ops))
        if k >= len(cands):
            if len(path) > len(best):
                best, best_stuck = list(path), cands
            stack.pop()
            if path:
                window.placed[path.pop()] = 0
            continue
        frame[4] = k + 1
        steps += 1
        if steps > budget:
            return Result(False, ops_checked=len(ops), inconclusive=True,
                          linearized=[original[i] for i in best],
                          stuck=[original[i] for i in best_stuck])
        i = cands[k]
        ok, new_state = step(state, ops[i])
        if not ok or (ops[i].complete == math.inf and new_state == state):
            continue  # cannot go next; or an unknown op with no effect here (as if never)
        nxt = linearized | 1 << i
        if (nxt, new_state) in cache:
            continue
        cache.add((nxt, new_state))
        path.append(i)
        window.placed[i] = 1
        nxt_cands, nxt_inv, nxt_ret = window.candidates(lo_inv, lo_ret)
        stack.append([nxt, new_state, n_answered + (ops[i].complete != math.inf), nxt_cands, 0,
                      nxt_inv, nxt_ret])
    return Result(False, ops_checked=len(ops), linearized=[original[i] for i in best],
                  stuck=[original[i] for i in best_stuck])


def check(ops: list[Op], initial: Any = None, budget: int = DEFAULT_BUDGET) -> Result:
    """Check a whole history, key by key. Returns the first failing key's result; a key whose
    search ran out of budget is skipped (its result is returned, inconclusive, only if no key
    fails)."""
    by_key: dict[Any, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    total = 0
    undecided: Result | None = None
    for key, key_ops in sorted(by_key.items(), key=lambda kv: repr(kv[0])):
        result = check_key(key_ops, initial, budget)
        total += result.ops_checked
        result.key = key
        if result.inconclusive:
            undecided = undecided or result
        elif not result.ok:
            return result
    if undecided is not None:
        undecided.ops_checked = total
        return undecided
    return Result(True, ops_checked=total)


def describe(result: Result) -> str:
    """A human-readable account of a failure: the order that worked, then the dead end."""
    if result.ok:
        return f"linearizable ({result.ops_checked} operations)"
    if result.inconclusive:
        return (f"INCONCLUSIVE on key {result.key!r}: the search ran out of budget "
                f"(no violation found; every other key is linearizable)")
    lines = [f"NOT linearizable on key {result.key!r}; longest valid order found:"]
    lines += [f"  {_fmt(op)}" for op in result.linearized[-10:]]
    lines.append("then none of these can take effect next:")
    lines += [f"  {_fmt(op)}" for op in result.stuck]
    return "\n".join(lines)


def _fmt(op: Op) -> str:
    done = "never" if op.complete == math.inf else f"{op.complete:.6f}"
    return f"client {op.client} {op.kind}({op.input!r}) -> {op.output!r}  [{op.invoke:.6f} .. {done}]"


# --- shrinking a failing history ------------------------------------------------------------

def _written(op: Op) -> Any:
    if op.kind == PUT:
        return op.input
    if op.kind == CAS and op.output is not False:
        return op.input[1]
    return _UNOBSERVED


def _needs(op: Op) -> Any:
    """The value this operation must have seen written (a read's value; a swapped cas's
    expected value), or _UNOBSERVED."""
    if op.kind == GET and op.output is not None:
        return op.output
    if op.kind == CAS and op.output:
        return op.input[0]
    return _UNOBSERVED


def reduce(ops: list[Op], result: Result | None = None, budget: int = 20_000,
           max_seconds: float = 30.0) -> list[Op]:
    """A small sub-history of a non-linearizable one that is still not linearizable, for a
    person to read: the failing key only; then the shortest failing window in invocation order
    (binary searches on its end and its start); then delta debugging (Zeller's ddmin) over the
    remaining operations, ending 1-minimal when time allows (no single operation can go).
    Candidates must stay *closed*: a read (or a swapped cas) keeps the write of the value it
    saw if the original history had one, so the result shows the original anomaly, not a
    read of a value whose write was cut away. Returns ``ops`` itself if it does not fail."""
    import time
    result = result or check(ops, budget=DEFAULT_BUDGET)
    if result.ok or result.inconclusive:
        return list(ops)
    hist = sorted((op for op in ops if op.key == result.key), key=lambda op: op.invoke)
    writers = {_written(op) for op in hist}
    deadline = time.monotonic() + max_seconds

    def fails(sub: list[Op]) -> bool:
        have = {_written(op) for op in sub}
        if any(_needs(op) in writers and _needs(op) not in have for op in sub):
            return False
        r = check_key(sub, budget=budget)
        return not r.ok and not r.inconclusive

    if not fails(hist):  # the small budget cannot decide it: keep the full key history
        return hist
    lo, hi = 1, len(hist)  # shortest failing prefix (heuristic: failure is not monotone)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fails(hist[:mid]) else (mid + 1, hi)
    cur = hist[:hi] if fails(hist[:hi]) else hist
    lo, hi = 0, len(cur) - 1  # then the latest start that still fails
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fails(cur[mid:]) else (lo, mid - 1)
    cur = cur[lo:] if fails(cur[lo:]) else cur
    n = 2
    while len(cur) >= 2 and time.monotonic() < deadline:
        size = -(-len(cur) // n)
        chunks = [cur[i:i + size] for i in range(0, len(cur), size)]
        for i in range(len(chunks)):
            rest = [op for j, ch in enumerate(chunks) if j != i for op in ch]
            if fails(chunks[i]):
                cur, n = chunks[i], 2
                break
            if fails(rest):
                cur, n = rest, max(n - 1, 2)
                break
        else:
            if n >= len(cur):
                break
            n = min(len(cur), 2 * n)
    return cur


def describe_history(ops: list[Op]) -> str:
    return "\n".join(f"  {_fmt(op)}" for op in sorted(ops, key=lambda op: op.invoke))
