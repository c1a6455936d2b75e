"""A driver releases the placement groups its own job left behind (a Train controller killed mid-start leaks one
that Ray never removes), and only those: the groups it held before stay."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.integration


def _state(pg_hex: str) -> str:
    from ray.util.placement_group import placement_group_table

    return placement_group_table()[pg_hex]["state"]


def test_release_removes_this_jobs_new_groups_also_one_registered_late(ray_local) -> None:
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

    from protpeft.trainer.placement_groups import job_placement_groups, release_placement_groups

    held = placement_group([{"CPU": 0.1}])  # the user's own group, from before the work
    ray.get(held.ready(), timeout=60)
    before = job_placement_groups()
    assert held.id.hex() in before

    @ray.remote(num_cpus=0)
    class DyingController:
        """Like a Train controller retrying its worker group as it is killed: registers a group a moment later."""

        def alive(self) -> bool:
            return True

        def register_later(self, delay: float) -> str:
            time.sleep(delay)
            return placement_group([{"CPU": 1}]).id.hex()

    left = placement_group([{"CPU": 1}])  # a group the stopped work left behind
    ray.get(left.ready(), timeout=60)
    controller = DyingController.remote()
    ray.get(controller.alive.remote(), timeout=120)  # its process started: "late" counts from the release's start
    late = controller.register_later.remote(1.0)
    late_hex = None
    try:
        removed = release_placement_groups(before, settle_s=4.0)
        late_hex = ray.get(late, timeout=30)
        assert removed[0] == left.id.hex() and late_hex in removed and len(removed) == 2, removed
        deadline = time.monotonic() + 10
        while {_state(left.id.hex()), _state(late_hex)} != {"REMOVED"}:
            assert time.monotonic() < deadline, (_state(left.id.hex()), _state(late_hex))
            time.sleep(0.1)
        assert _state(held.id.hex()) == "CREATED" and job_placement_groups() == before
    finally:  # whatever failed, nothing of this test may hold the shared instance's CPUs afterwards
        ray.kill(controller)
        for hex_id in filter(None, (held.id.hex(), left.id.hex(), late_hex)):
            if _state(hex_id) != "REMOVED":
                remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(hex_id)))
