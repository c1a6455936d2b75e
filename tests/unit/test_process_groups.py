"""``group_alive`` and ``wait_groups_gone``: a stop loop waits for the processes of a group, not for its unreaped
zombie, and gives up at its deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from protpeft.process_groups import group_alive, wait_groups_gone

pytestmark = pytest.mark.unit


def test_a_group_is_alive_while_a_member_runs_and_gone_once_only_a_zombie_is_left() -> None:
    leader = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert group_alive(leader.pid)
        os.killpg(leader.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group_alive(leader.pid):  # the leader is a zombie (not reaped yet) soon after the signal
            assert time.monotonic() < deadline, "the killed group still counts as alive"
            time.sleep(0.05)
        os.killpg(leader.pid, 0)  # ... and still there for killpg: only the zombie check tells it is gone
    finally:
        leader.kill()
        leader.wait()
    assert not group_alive(leader.pid)


def test_waiting_gives_up_on_a_group_that_ignores_sigterm_and_ends_once_it_is_killed() -> None:
    leader = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 60 & wait"], start_new_session=True)
    try:
        time.sleep(0.3)  # the trap is set
        os.killpg(leader.pid, signal.SIGTERM)
        started = time.monotonic()
        assert not wait_groups_gone([leader.pid], 0.5, leader.poll)
        assert time.monotonic() - started >= 0.5
        os.killpg(leader.pid, signal.SIGKILL)
        assert wait_groups_gone([leader.pid], 10, leader.poll)
    finally:
        if group_alive(leader.pid):
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
