"""Property tests: random request sequences against the Store and the reference model agree on
every response field (and on every error), including reads of every retained revision."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import Model
from mvcc_strategies import SEED, requests
from shardkv.mvcc.errors import EtcdError
from shardkv.mvcc.kv import RangeRequest, TxnRequest
from shardkv.mvcc.store import Store, is_readonly_txn

settings.register_profile(
    "mvcc", max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MVCC = settings.get_profile("mvcc")


def _outcome(call, *args):
    try:
        return call(*args)
    except EtcdError as err:
        return err


def _same(got: object, want: object) -> None:
    if isinstance(want, EtcdError):
        assert type(got) is type(want), (got, want)
        assert str(got) == str(want)
    else:
        assert got == want


def _is_read(req: object) -> bool:
    return isinstance(req, RangeRequest) or (isinstance(req, TxnRequest) and is_readonly_txn(req))


@MVCC
@given(seq=st.lists(st.tuples(requests, st.booleans()), min_size=3, max_size=40))
def test_store_matches_model(tmp_path_factory, seq) -> None:
    model = Model()
    with Store(tmp_path_factory.mktemp("prop")) as store, \
            Store(tmp_path_factory.mktemp("replica"), durable=False) as replica:
        pending: list[tuple[object, object]] = [(r, model.write(r)) for r in SEED]
        index = 0

        def flush() -> None:
            nonlocal index
            batch = []
            for req, _ in pending:
                index += 1
                batch.append((index, req))
                replica.apply([(index, req)])  # same log, one entry per batch
            result = store.apply(batch)
            for got, (_, want) in zip(result.results, pending):
                _same(got, want)
            pending.clear()

        for req, flush_now in seq:
            if _is_read(req):
                flush()
                want = model.read(req)
                got = _outcome(store.range if isinstance(req, RangeRequest) else store.txn_readonly, req)
                _same(got, want)
                continue
            pending.append((req, model.write(req)))
            if flush_now:
                flush()
        flush()
        assert store.current_revision == model.rev
        assert store.consistent_index == index
        assert store.hash() == replica.hash()  # replicas agree byte for byte
        assert store.hash_kv(0) == replica.hash_kv(0)
        for rev in range(max(model.compact, 1), model.rev + 1):
            req = RangeRequest(key=b"\x00", range_end=b"\x00", revision=rev)
            _same(_outcome(store.range, req), model.read(req))
