"""Storage engine: etcd v3.4 MVCC state machine in LMDB (``store``), request/response types
(``kv``), errors with etcd's texts (``errors``), lease timing (``lease``), watch hub (``watch``),
state-machine snapshots (``snapshot``) and the durable Raft log (``raftlog``)."""
