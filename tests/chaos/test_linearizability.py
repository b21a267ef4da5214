"""The linearizability checker itself: known histories, and random histories from an atomic
register (linearizable by construction) with and without an injected stale read."""
import math
import random

from linearizability import CAS, GET, PUT, Op, check, describe, describe_history, reduce

INF = math.inf


def test_sequential_history_is_linearizable():
    ops = [Op(0, "k", PUT, 1, True, 0, 1), Op(0, "k", GET, None, 1, 2, 3)]
    assert check(ops).ok


def test_stale_read_after_completed_write_is_not():
    ops = [Op(0, "k", PUT, 1, True, 0, 1), Op(1, "k", PUT, 2, True, 2, 3), Op(2, "k", GET, None, 1, 4, 5)]
    result = check(ops)
    assert not result.ok and result.key == "k"
    assert "NOT linearizable" in describe(result)


def test_concurrent_read_may_see_either_value():
    write = Op(0, "k", PUT, 2, True, 0, 10)
    assert check([Op(1, "k", PUT, 1, True, -2, -1), write, Op(2, "k", GET, None, 1, 1, 2)]).ok
    assert check([Op(1, "k", PUT, 1, True, -2, -1), write, Op(2, "k", GET, None, 2, 1, 2)]).ok


def test_reads_cannot_go_back_in_time():
    ops = [
        Op(0, "k", PUT, 1, True, 0, 1),
        Op(0, "k", PUT, 2, True, 2, 10),
        Op(1, "k", GET, None, 2, 3, 4),
        Op(2, "k", GET, None, 1, 5, 6),  # after someone already saw 2
    ]
    assert not check(ops).ok


def test_unknown_write_may_or_may_not_take_effect():
    unknown = Op(0, "k", PUT, 7, None, 0, INF)
    assert check([unknown, Op(1, "k", GET, None, None, 1, 2)]).ok
    assert check([unknown, Op(1, "k", GET, None, 7, 1, 2)]).ok


def test_cas_semantics():
    ops = [
        Op(0, "k", PUT, 1, True, 0, 1),
        Op(1, "k", CAS, (1, 2), True, 2, 3),
        Op(2, "k", CAS, (1, 3), True, 4, 5),  # 1 is gone: cannot succeed
    ]
    assert not check(ops).ok
    ops[2] = Op(2, "k", CAS, (1, 3), False, 4, 5)
    assert check(ops).ok


def test_keys_are_checked_independently():
    ops = [Op(0, "a", PUT, 1, True, 0, 1), Op(1, "b", GET, None, None, 2, 3), Op(2, "a", GET, None, 1, 2, 3)]
    assert check(ops).ok


def _atomic_register_history(seed: int, clients: int, n: int, stale_at: int | None = None) -> list[Op]:
    """Concurrent clients on one atomic register: each op takes effect at a random instant
    inside its [invoke, complete] window, so the history is linearizable by construction —
    unless one read is made to return an older value."""
    rng = random.Random(seed)
    t = 0.0
    events = []  # (effect time, op builder)
    busy_until = [0.0] * clients
    for i in range(n):
        c = rng.randrange(clients)
        invoke = max(t, busy_until[c]) + rng.random()
        effect = invoke + rng.random()
        complete = effect + rng.random()
        busy_until[c] = complete
        t = invoke
        kind = rng.choice([GET, PUT, CAS])
        events.append((effect, i, c, kind, invoke, complete, rng.randrange(5)))
    events.sort()
    state, history, previous = None, [], []
    for k, (_, i, c, kind, invoke, complete, v) in enumerate(events):
        if kind == GET:
            out = state
            if stale_at is not None and k >= stale_at and previous and previous[0] != state:
                out, stale_at = previous[0], None
            history.append(Op(c, "k", GET, None, out, invoke, complete))
        elif kind == PUT:
            previous = [state]
            state = v
            history.append(Op(c, "k", PUT, v, True, invoke, complete))
        else:
            swapped = state == v
            if swapped:
                previous = [state]
                state = (v + 1) % 5
            history.append(Op(c, "k", CAS, (v, (v + 1) % 5), swapped, invoke, complete))
    return history


def test_random_atomic_histories_are_linearizable():
    for seed in range(30):
        assert check(_atomic_register_history(seed, clients=5, n=300)).ok, seed


def test_random_histories_with_a_stale_read_are_caught():
    caught = 0
    for seed in range(30):
        history = _atomic_register_history(seed, clients=3, n=200, stale_at=100)
        if not check(history).ok:
            caught += 1
    assert caught >= 15  # a stale read inside an overlapping window can still be legal


def test_checks_tens_of_thousands_of_operations():
    assert check(_atomic_register_history(1, clients=10, n=20_000)).ok


def test_many_unknown_puts_nobody_saw_are_cheap_and_do_not_hide_a_stale_read():
    """Twenty writes lost in an outage (unknown outcome, values never read) then a stale read:
    the search places interchangeable unobserved puts by count, not by subset."""
    lost = [Op(i, "k", PUT, f"lost{i}", None, 0.1 * i, INF) for i in range(20)]
    ok = [Op(0, "k", PUT, 1, True, 5, 6), Op(1, "k", PUT, 2, True, 7, 8),
          Op(2, "k", GET, None, 2, 9, 10), Op(3, "k", CAS, (2, 3), False, 11, 12)]
    assert check(lost + ok).ok  # the failed cas: some lost write landed after the put of 2
    stale = ok[:3] + [Op(2, "k", GET, None, 1, 11, 12)]
    result = check(lost + stale)
    assert not result.ok and not result.inconclusive


def test_a_stale_read_in_a_big_history_reduces_to_a_few_operations():
    """Plant one stale read in 3000 operations of 8 clients: the reduction keeps only a handful
    of operations, still not linearizable, and keeps the stale read itself."""
    for seed in range(20):
        history = _atomic_register_history(seed, clients=8, n=3000, stale_at=1500)
        result = check(history)
        if not result.ok:
            break
    else:
        raise AssertionError("no seed gave a detectable stale read")
    small = reduce(history, result)
    assert len(small) <= 8, describe_history(small)
    assert not check(small).ok
    assert set(small) <= set(history)
    assert any(op.kind == GET for op in small)
    print(describe_history(small))
