"""shardkv: an etcd-compatible, sharded, strongly consistent key-value store."""
