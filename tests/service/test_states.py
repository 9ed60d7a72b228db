"""The estimate state machine."""
import pytest

from service.states import TERMINAL, TRANSITIONS, JobState


def test_terminal_states_have_no_way_out():
    assert {s for s in JobState if s.is_terminal} == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    for s in TERMINAL:
        assert not TRANSITIONS[s]


@pytest.mark.parametrize("old,new,legal", [
    ("QUEUED", "RUNNING", True), ("QUEUED", "CANCELLED", True), ("QUEUED", "FAILED", True),
    ("QUEUED", "SUCCEEDED", True), ("RUNNING", "SUCCEEDED", True), ("RUNNING", "CANCELLED", True),
    ("RUNNING", "QUEUED", False), ("RUNNING", "RUNNING", False), ("SUCCEEDED", "FAILED", False),
    ("CANCELLED", "RUNNING", False), ("FAILED", "SUCCEEDED", False), ("SUCCEEDED", "CANCELLED", False),
])
def test_transitions(old, new, legal):
    assert JobState(old).can_become(JobState(new)) is legal
    assert (JobState(old) in JobState(new).predecessors()) is legal


def test_every_state_but_queued_is_reachable_from_queued():
    reachable, frontier = {JobState.QUEUED}, [JobState.QUEUED]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(JobState)
    assert JobState.QUEUED.predecessors() == ()
