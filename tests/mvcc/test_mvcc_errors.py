"""Every client-facing storage error carries text the API layer's etcd error table knows."""
from __future__ import annotations

import pytest

from shardkv.api import errors as api_errors
from shardkv.mvcc import errors as E

INTERNAL = {E.NotPrimaryError, E.SnapshotChecksumError}  # never sent to clients as such
CLIENT_FACING = [c for c in vars(E).values()
                 if isinstance(c, type) and issubclass(c, E.EtcdError)
                 and c is not E.EtcdError and c not in INTERNAL]


@pytest.mark.parametrize("error", CLIENT_FACING, ids=lambda c: c.__name__)
def test_error_text_is_etcds_wire_text(error):
    assert api_errors.from_message(str(error())) is not None
