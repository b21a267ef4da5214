"""etcd's flags, environment variables and config file, and startup refusals."""
import signal
import subprocess
import sys

import pytest

from shardkv.node import flags
from shardkv.node.cli import member_config


def test_no_flags_is_a_one_member_cluster_named_default():
    s = flags.parse([], environ={})
    cfg = member_config(s)
    assert cfg.name == "default" and cfg.data_dir == "default.shardkv"
    assert s.urls("listen-client-urls") == ["http://127.0.0.1:2379"]
    assert cfg.initial_cluster == {"default": ["http://127.0.0.1:2380"]}
    assert (cfg.heartbeat_ms, cfg.election_ms, cfg.snapshot_count) == (100, 1000, 100000)
    assert cfg.max_request_bytes == 1536 * 1024 and cfg.max_txn_ops == 128


def test_flag_forms_and_env():
    s = flags.parse(["--name=a", "--heartbeat-interval", "50", "--snapshot-count=7"],
                    environ={"ETCD_NAME": "ignored", "ETCD_ELECTION_TIMEOUT": "900"})
    assert s.get("name") == "a" and s.int("heartbeat-interval") == 50
    assert s.int("election-timeout") == 900 and s.int("snapshot-count") == 7
    assert s.data_dir == "a.shardkv"


def test_unknown_flag_is_named():
    with pytest.raises(flags.FlagError, match="unknown flag: --no-such-flag"):
        flags.parse(["--no-such-flag=1"], environ={})


def test_tls_flags_refuse_startup():
    with pytest.raises(flags.FlagError, match="--cert-file"):
        flags.parse(["--cert-file", "/x.pem"], environ={})
    with pytest.raises(flags.FlagError, match="--client-cert-auth"):
        flags.parse(["--client-cert-auth"], environ={})


def test_other_etcd_flags_are_accepted_and_reported():
    s = flags.parse(["--enable-pprof", "--max-wals=3", "--logger", "zap"], environ={})
    assert s.ignored == ["enable-pprof", "logger", "max-wals"]


def test_config_file_uses_etcd_yaml_keys(tmp_path):
    path = tmp_path / "etcd.yml"
    path.write_text("name: y\nheartbeat-interval: 20\nelection-timeout: 200\n"
                    "initial-cluster: y=http://127.0.0.1:9\ninitial-advertise-peer-urls: "
                    "http://127.0.0.1:9\nenable-v2: false\n")
    s = flags.parse(["--config-file", str(path)], environ={})
    cfg = member_config(s)
    assert cfg.name == "y" and cfg.heartbeat_ms == 20 and cfg.election_ms == 200
    assert cfg.initial_cluster == {"y": ["http://127.0.0.1:9"]}


def test_election_timeout_must_cover_heartbeats():
    with pytest.raises(flags.FlagError, match="at least 5 times"):
        member_config(flags.parse(["--heartbeat-interval=100", "--election-timeout=200"],
                                  environ={}))


def run_node(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shardkv.node.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_rejects_unknown_flag_and_tls():
    p = run_node("--bogus")
    assert p.returncode == 2 and "unknown flag: --bogus" in p.stderr
    p = run_node("--peer-cert-file=/x")
    assert p.returncode == 2 and "--peer-cert-file" in p.stderr


@pytest.mark.etcdctl
def test_data_dir_of_another_cluster_is_refused(cluster_factory):
    c = cluster_factory(1)
    node = c.nodes[0]
    node.kill(signal.SIGTERM)
    args = [a if a != "test-cluster" else "other-cluster" for a in node.args]
    p = run_node(*args)
    assert p.returncode == 1 and "refusing to start" in p.stderr
    node.start()  # the right flags still work: the data dir resumes
    import harness
    harness.wait_ready(c)
    assert "ready to serve client requests" in node.log()


def test_auto_compaction_retention_like_etcd():
    from shardkv.node.compactor import parse_retention
    assert parse_retention("periodic", "1") == 3600
    assert parse_retention("periodic", "1h30m") == 5400
    assert parse_retention("periodic", "10s") == 10
    assert parse_retention("revision", "1000") == 1000
    with pytest.raises(flags.FlagError, match="auto-compaction-retention"):
        member_config(flags.parse(["--auto-compaction-retention=soon"], environ={}))


def test_grpc_server_takes_native_or_grpcio():
    p = run_node("--grpc-server=h3", "--data-dir", "/nonexistent/never-created")
    assert p.returncode != 0
    assert "--grpc-server must be native or grpcio" in p.stderr
