"""Placement groups this driver's job leaves behind when a search is interrupted.

On Ctrl+C, Tune kills the trial actors and with them their Ray Train controllers. A controller that is mid-way
through starting its worker group sees its workers cancelled, retries (Ray Train's default controller failure limit
is unlimited) and can register a new worker-group placement group in the instant before it dies itself. Ray 2.60 did
not remove such a group when its creator and then its job ended (seen in this project's suite and CI: a 2-CPU group
of the interrupted job, registered 0.3 s before its controller died, still held at the end of the session), so it
kept its CPUs reserved for the life of the cluster and the next run (``protpeft tune --resume``, another search)
waited for them forever. Ray Train's placement-group cleaner does not cover it: a group is handed to the cleaner only
once its worker group has started.

A placement group's ID ends with the ID of the job that created it (actors a driver starts, and the actors those
start, belong to the driver's job), so the driver can find and remove exactly the groups its own trials created.
"""

from __future__ import annotations

import time

__all__ = ["job_placement_groups", "release_placement_groups"]


def job_placement_groups() -> set[str]:
    """IDs (hex) of this job's placement groups that still hold or wait for resources."""
    import ray
    from ray.util.placement_group import placement_group_table

    job = ray.get_runtime_context().get_job_id()
    return {pg for pg, row in placement_group_table().items() if pg.endswith(job) and row["state"] != "REMOVED"}


def release_placement_groups(keep: set[str], settle_s: float = 0.0, poll_s: float = 0.25) -> list[str]:
    """Remove this job's placement groups except ``keep`` (those that existed before the work that ended), and keep
    doing so for ``settle_s`` seconds, the time a dying Train controller may still take to register one.

    Returns:
        The IDs removed, in order.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed: list[str] = []
    deadline = time.monotonic() + settle_s
    while True:
        for pg in sorted(job_placement_groups() - keep - set(removed)):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg)))
            removed.append(pg)
        if time.monotonic() >= deadline:
            return removed
        time.sleep(poll_s)
