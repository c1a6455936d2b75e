"""``group_alive``: a stop loop waits for the processes of a group, not for its unreaped zombie."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from protpeft.process_groups import group_alive

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
