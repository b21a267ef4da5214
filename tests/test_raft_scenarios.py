"""Classic Raft scenarios, driven step by step (Raft paper figures, etcd-io/raft's unit cases)."""
import pytest

from raftsim.network import Cluster
from shardkv.raft import ConfChange, ConfChangeType, MessageType, ProposalDropped, StateRole
from shardkv.raft.raft import BUG_COMMIT_PREVIOUS_TERM

PLAIN = dict(pre_vote=False, check_quorum=False)


def _figure8(bugs: frozenset[str]) -> Cluster:
    """Raft paper figure 8: an entry of an old term, replicated to a majority by a later leader,
    must not count as committed until an entry of the leader's own term is too."""
    c = Cluster(5, bugs=bugs, max_size_per_msg=1, **PLAIN)  # one entry per append message
    c.campaign(1)  # (a) S1 leads term 2 ...
    assert c.leader() == 1
    for j in (3, 4, 5):
        c.cut.update({(1, j), (j, 1)})
    c.node(1).propose(b"x")  # ... and replicates x (term 2) to S2 only
    c.deliver()
    x_index = c.node(1).raft.log.last_index()
    c.crash(1)
    c.heal()
    c.cut.update({(5, 2), (2, 5)})
    # (b) S5 leads term 3 with votes of S3, S4; its entries reach nobody
    c.node(5).campaign()
    c.deliver(drop=lambda m: m.frm == 5 and m.type == MessageType.APP)
    assert c.node(5).is_leader
    c.node(5).propose(b"y")
    c.deliver(drop=lambda m: m.frm == 5 and m.type == MessageType.APP)
    c.crash(5)
    c.heal()
    # (c) S1 restarts, leads term 4, and re-replicates x (term 2) to S3 and S4; its own
    # term-4 entry is lost on the way
    c.start(1)
    probed: set[int] = set()

    def noop_lost(m) -> bool:
        """S1's term-4 entry never arrives anywhere; only S3's and S4's first probe, which they
        reject for lacking x, gets through (so S1 backs up and re-sends x alone)."""
        if m.type != MessageType.APP or not any(e.term == 4 for e in m.entries):
            return False
        if m.to in (3, 4) and m.to not in probed:
            probed.add(m.to)
            return False
        return True

    for _ in range(2):  # its first try (term 3) loses: S3 and S4 already voted in term 3
        c.node(1).campaign()
        c.deliver(drop=noop_lost)
    assert c.node(1).is_leader and c.node(1).raft.term == 4
    c.tick_all(drop=noop_lost)  # heartbeats carry the commit index S1 believes in
    c.crash(1)
    # (d) S5 restarts and leads term 5 (its last term 3 beats the others' 2): x is overwritten
    c.start(5)
    for _ in range(2):  # term 4 is taken; term 5 wins
        c.campaign(5)
    assert c.node(5).is_leader
    c.tick_all(3)
    return c, x_index


def applied_at(c: Cluster, index: int) -> set[tuple[int, bytes]]:
    """Every distinct entry any node applied at ``index``."""
    return {(e.term, e.data) for i in c.ids for e in c.applied[i] if e.index == index}


def test_figure8_old_term_entry_is_not_committed_by_counting():
    c, x_index = _figure8(frozenset())
    assert applied_at(c, x_index) == {(3, b"")}  # S5's term-3 entry won; x was never applied
    assert len({tuple(c.log_terms(i)) for i in (2, 3, 4, 5)}) == 1


def test_figure8_planted_bug_breaks_state_machine_safety():
    c, x_index = _figure8(frozenset([BUG_COMMIT_PREVIOUS_TERM]))
    assert applied_at(c, x_index) == {(2, b"x"), (3, b"")}  # two nodes applied different entries


# ---- elections -------------------------------------------------------------------------------
def elect(c: Cluster, ticks: int = 50) -> int:
    for _ in range(ticks):
        c.tick_all()
        if c.leader() is not None:
            return c.leader()
    raise AssertionError("no leader elected")


def test_single_node_elects_itself_and_commits():
    c = Cluster(1)
    leader = elect(c)
    c.node(leader).propose(b"a")
    c.deliver()
    assert c.data_applied(1) == [b"a"]


def test_three_nodes_elect_exactly_one_leader_and_replicate():
    c = Cluster(3)
    leader = elect(c)
    assert sum(1 for i in c.ids if c.node(i).is_leader) == 1
    c.node(leader).propose(b"a")
    c.deliver()
    c.tick_all(2)
    assert all(c.data_applied(i) == [b"a"] for i in c.ids)


def test_vote_refused_to_candidate_with_stale_log():
    c = Cluster(3, **PLAIN)
    c.campaign(1)
    c.cut.update({(1, 3), (3, 1), (2, 3), (3, 2)})
    c.node(1).propose(b"a")
    c.deliver()  # 1 and 2 have "a"; 3 does not
    c.heal()
    c.crash(1)
    c.node(3).campaign()
    c.deliver()
    assert not c.node(3).is_leader  # 2 refuses: 3's log is behind (§5.4.1)


def test_prevote_keeps_a_rejoining_partitioned_node_from_deposing_the_leader():
    c = Cluster(3)
    leader = elect(c)
    other = next(i for i in c.ids if i != leader)
    isolated = next(i for i in c.ids if i not in (leader, other))
    c.isolate(isolated)
    c.tick_all(100)  # the isolated node times out again and again: pre-votes only
    assert c.node(isolated).raft.term == c.node(leader).raft.term
    c.heal()
    c.tick_all(5)
    assert c.leader() == leader and c.node(leader).raft.term == c.node(isolated).raft.term


def test_check_quorum_leader_steps_down_when_cut_off():
    c = Cluster(3)
    leader = elect(c)
    c.isolate(leader)
    c.tick_all(30)
    assert c.node(leader).raft.role != StateRole.LEADER


def test_follower_truncates_conflicting_suffix():
    c = Cluster(3, **PLAIN)
    c.campaign(1)
    c.isolate(1)
    for d in (b"lost1", b"lost2"):
        c.node(1).propose(d)  # never leaves node 1
    c.deliver()
    c.heal()
    c.crash(1)
    c.campaign(2)
    c.node(2).propose(b"kept")
    c.deliver()
    c.start(1)
    c.tick_all(3)
    assert c.log_terms(1) == c.log_terms(2)
    assert b"lost1" not in c.data_applied(1) and b"kept" in c.data_applied(1)


def test_fast_backtracking_skips_a_divergent_term_in_few_round_trips():
    c = Cluster(3, **PLAIN)
    c.campaign(1)
    c.isolate(1)
    for k in range(100):
        c.node(1).propose(b"stale%d" % k)
    c.deliver()
    c.heal()
    c.crash(1)
    c.campaign(2)
    for k in range(100):
        c.node(2).propose(b"new%d" % k)
    c.deliver()
    c.start(1)
    c.sent.clear()
    c.tick_all(3)
    rejections = [m for m in c.sent if m.type == MessageType.APP_RESP and m.reject and m.frm == 1]
    assert len(rejections) <= 3  # not one per divergent entry
    assert c.log_terms(1) == c.log_terms(2)


# ---- flow control and batching ----------------------------------------------------------------
def test_many_proposals_travel_in_one_append_per_follower():
    c = Cluster(3)
    leader = elect(c)
    c.sent.clear()
    c.node(leader).propose_batch([b"x%d" % k for k in range(64)])
    c.deliver()
    appends = [m for m in c.sent if m.type == MessageType.APP and m.entries]
    assert len(appends) == 2 and all(len(m.entries) == 64 for m in appends)


def test_commit_only_appends_to_caught_up_followers_go_unanswered():
    """After a commit, the append that only carries the commit index to followers that acked
    everything asks for no answer; followers still apply. One that had not acked gets a normal
    append, and answers it."""
    c = Cluster(3)
    leader = elect(c)
    c.tick_all(2)
    c.sent.clear()
    c.node(leader).propose(b"a")
    c.deliver()
    commit_only = [m for m in c.sent if m.type == MessageType.APP and not m.entries]
    assert len(commit_only) == 2 and all(m.quiet for m in commit_only)
    answered = [m for m in c.sent if m.type == MessageType.APP_RESP]
    assert len(answered) == 2  # the acks of the entry itself, nothing for the commit updates
    assert all(c.data_applied(i) == [b"a"] for i in c.ids)
    # a follower whose ack was lost: the leader does not know it holds the entry, so the next
    # append to it is not quiet; its answer lets the leader learn that
    lagging = next(i for i in c.ids if i != leader)
    c.sent.clear()
    c.node(leader).propose(b"b")
    c.deliver(drop=lambda m: m.frm == lagging and m.type == MessageType.APP_RESP)
    c.tick_all(3)
    assert c.node(leader).raft.prs[lagging].match == c.node(leader).raft.log.last_index()
    assert all(c.data_applied(i) == [b"a", b"b"] for i in c.ids)


def test_lazy_followers_learn_commits_from_the_next_append_or_a_flush():
    """Followers that nobody waits on are skipped by commit broadcasts: they learn a commit
    from the next append, or from flush_commit_notices when none follows. A follower that
    forwards a proposal is told of commits at once again."""
    c = Cluster(3)
    leader = elect(c)
    followers = [i for i in c.ids if i != leader]
    for i in followers:
        c.node(i).set_lazy(True)
    c.tick_all(2)  # heartbeat answers tell the leader
    c.sent.clear()
    c.node(leader).propose(b"a")
    c.deliver()
    assert not [m for m in c.sent if m.type == MessageType.APP and not m.entries]
    assert c.data_applied(leader) == [b"a"]
    assert all(c.data_applied(i) == [] for i in followers)
    assert c.node(leader).commit_notices_owed
    c.node(leader).propose(b"b")  # its append carries the commit of "a"
    c.deliver()
    assert all(c.data_applied(i) == [b"a"] for i in followers)
    c.node(leader).flush_commit_notices()
    c.deliver()
    assert all(c.data_applied(i) == [b"a", b"b"] for i in c.ids)
    assert not c.node(leader).commit_notices_owed
    # a follower forwarding a proposal is told of the commit at once, even when the other
    # follower's ack commits the entry before its own (still lazy) answer arrives
    proposer = followers[0]
    c.node(proposer).set_lazy(False)  # as the host does while a request waits
    c.sent.clear()
    c.node(proposer).propose(b"c")
    c.deliver(drop=lambda m: m.frm == proposer and m.type == MessageType.APP_RESP)
    assert c.data_applied(proposer) == [b"a", b"b", b"c"]
    notices = [m for m in c.sent if m.type == MessageType.APP and not m.entries]
    assert [m.to for m in notices] == [proposer]
    # heartbeats carry the commit too: the other lazy follower catches up without a flush
    c.tick_all(2)
    assert all(c.data_applied(i) == [b"a", b"b", b"c"] for i in c.ids)


def test_a_follower_that_stops_being_lazy_is_told_the_commit_with_its_next_ack():
    c = Cluster(3)
    leader = elect(c)
    waking = next(i for i in c.ids if i != leader)
    c.node(waking).set_lazy(True)
    c.tick_all(2)
    c.node(leader).propose(b"a")
    c.deliver(drop=lambda m: m.frm == waking and m.type == MessageType.APP_RESP)  # ack still to come
    assert c.data_applied(waking) == []
    c.node(waking).set_lazy(False)
    c.node(leader).propose(b"b")
    c.deliver()
    assert c.data_applied(waking) == [b"a", b"b"]


def test_lazy_followers_hear_a_membership_change_at_once():
    c = Cluster(3)
    leader = elect(c)
    followers = [i for i in c.ids if i != leader]
    for i in followers:
        c.node(i).set_lazy(True)
    c.tick_all(2)
    c.node(leader).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    c.deliver()  # no tick, no flush: the broadcast after the commit reached them
    index = c.node(leader).raft.log.committed
    assert all(c.applied[i][-1].index == index and c.applied[i][-1].type == 1 for i in c.ids)


def test_inflight_window_bounds_unacknowledged_appends():
    c = Cluster(3, max_inflight_msgs=2, max_size_per_msg=1)
    leader = elect(c)
    slow = next(i for i in c.ids if i != leader)
    c.tick_all(2)
    c.sent.clear()
    for k in range(10):
        c.node(leader).propose(b"x%d" % k)
        c.deliver(drop=lambda m: m.to == slow and m.type == MessageType.APP and bool(m.entries))
    to_slow = [m for m in c.sent if m.to == slow and m.type == MessageType.APP and m.entries]
    assert len(to_slow) == 2  # then the window is full until the follower answers


# ---- reads ----------------------------------------------------------------------------------
def test_read_index_on_leader_and_follower_covers_committed_writes():
    c = Cluster(3)
    leader = elect(c)
    c.node(leader).propose(b"w")
    c.deliver()
    committed = c.node(leader).raft.log.committed
    follower = next(i for i in c.ids if i != leader)
    c.node(leader).read_index(b"r1")
    c.node(follower).read_index(b"r2")
    c.tick_all(2)
    (rs1,) = c.read_states[leader]
    (rs2,) = c.read_states[follower]
    assert rs1.context == b"r1" and rs1.index >= committed
    assert rs2.context == b"r2" and rs2.index >= committed


def test_read_index_without_leader_is_refused():
    c = Cluster(3)
    with pytest.raises(ProposalDropped):
        c.node(1).read_index(b"r")


def test_deposed_leader_cannot_confirm_a_read():
    c = Cluster(3)
    leader = elect(c)
    c.isolate(leader)
    c.node(leader).read_index(b"stale")
    c.tick_all(30)
    assert c.read_states[leader] == []


# ---- snapshots --------------------------------------------------------------------------------
def test_lagging_follower_catches_up_from_a_snapshot():
    c = Cluster(3)
    leader = elect(c)
    lagging = next(i for i in c.ids if i != leader)
    c.crash(lagging)
    for k in range(20):
        c.node(leader).propose(b"x%d" % k)
        c.deliver()
    c.tick_all(2)
    for i in c.ids:
        if i != lagging:
            c.compact(i)
    c.start(lagging)
    c.sent.clear()
    c.tick_all(5)
    assert any(m.type == MessageType.SNAPSHOT and m.to == lagging for m in c.sent)
    assert c.node(lagging).raft.log.committed == c.node(leader).raft.log.committed
    assert c.disks[lagging].snapshot.data.startswith(b"state@")


# ---- membership ------------------------------------------------------------------------------
def change(c: Cluster, leader: int, kind: ConfChangeType, node: int) -> None:
    c.node(leader).propose_conf_change(ConfChange(kind, node))
    c.deliver()
    c.tick_all(3)


def test_add_learner_then_promote_then_remove():
    c = Cluster(3)
    leader = elect(c)
    c.add_node(4)
    change(c, leader, ConfChangeType.ADD_LEARNER, 4)
    assert 4 in c.node(leader).raft.conf.learners
    c.node(leader).propose(b"after-learner")
    c.deliver()
    c.tick_all(3)
    assert b"after-learner" in c.data_applied(4)
    assert not c.node(4).raft.is_voter()
    change(c, leader, ConfChangeType.ADD_NODE, 4)
    assert c.node(4).raft.conf.voters == (1, 2, 3, 4)
    change(c, leader, ConfChangeType.REMOVE_NODE, 4)
    assert c.node(leader).raft.conf.voters == (1, 2, 3)


def test_one_membership_change_at_a_time():
    c = Cluster(3)
    leader = elect(c)
    c.add_node(4)
    c.add_node(5)
    c.node(leader).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    with pytest.raises(ProposalDropped):
        c.node(leader).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))


def test_removed_leader_steps_down_and_the_rest_elect_a_new_one():
    c = Cluster(3)
    leader = elect(c)
    change(c, leader, ConfChangeType.REMOVE_NODE, leader)
    assert not c.node(leader).is_leader
    c.tick_all(40)
    new = c.leader()
    assert new is not None and new != leader
    c.node(new).propose(b"after")
    c.deliver()
    assert b"after" in c.data_applied(new)


def test_learner_never_campaigns():
    c = Cluster(3)
    leader = elect(c)
    c.add_node(4)
    change(c, leader, ConfChangeType.ADD_LEARNER, 4)
    c.isolate(4)
    c.tick_all(100)
    assert c.node(4).raft.role == StateRole.FOLLOWER and c.node(4).raft.term == c.node(leader).raft.term


# ---- leadership transfer ---------------------------------------------------------------------
def test_transfer_leadership_to_a_caught_up_follower():
    c = Cluster(3)
    leader = elect(c)
    target = next(i for i in c.ids if i != leader)
    c.node(leader).transfer_leader(target)
    c.deliver()
    assert c.leader() == target


def test_transfer_to_a_lagging_follower_catches_it_up_first():
    c = Cluster(3)
    leader = elect(c)
    target = next(i for i in c.ids if i != leader)
    c.crash(target)
    for k in range(5):
        c.node(leader).propose(b"x%d" % k)
    c.deliver()
    c.start(target)
    c.node(leader).transfer_leader(target)
    with pytest.raises(ProposalDropped):
        c.node(leader).propose(b"during-transfer")  # the old leader stops taking proposals
    c.tick_all(3)
    assert c.leader() == target
    assert c.data_applied(target)[-5:] == [b"x%d" % k for k in range(5)]


def test_proposal_without_leader_is_dropped():
    c = Cluster(3)
    with pytest.raises(ProposalDropped):
        c.node(1).propose(b"x")


def test_restart_recovers_exactly_what_was_persisted():
    c = Cluster(3)
    leader = elect(c)
    for k in range(5):
        c.node(leader).propose(b"x%d" % k)
    c.deliver()
    c.tick_all(2)
    for i in list(c.ids):
        c.crash(i)
    for i in list(c.ids):
        c.start(i)
    elect(c)
    c.tick_all(3)
    assert all(c.data_applied(i) == [b"x%d" % k for k in range(5)] for i in c.ids)


def test_leader_cut_off_stops_taking_proposals_past_the_uncommitted_limit():
    c = Cluster(3, max_uncommitted_size=1000, check_quorum=False)
    leader = elect(c)
    c.isolate(leader)
    for _ in range(10):
        c.node(leader).propose(b"x" * 100)  # 1,000 bytes: up to the limit
    with pytest.raises(ProposalDropped, match="uncommitted"):
        c.node(leader).propose(b"y")
    c.heal()
    c.tick_all(3)
    assert c.leader() == leader
    c.node(leader).propose(b"z" * 100)  # committed entries no longer count
    c.deliver()
