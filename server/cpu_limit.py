"""How many CPUs this process may use: the fewer of its CPU affinity and its cgroup's CPU quota.

A container started with `--cpus 2`, or a Kubernetes pod with a CPU limit of 2, still sees every core of its node in
os.cpu_count(); sizing gateway workers from that would start dozens of processes that the quota then throttles. The
quota is read the way the JVM and Go runtimes read it: /proc/self/mountinfo says where each cgroup hierarchy is
mounted, /proc/self/cgroup which cgroup this process is in, and the smallest quota from that cgroup up to the mount
point binds (a parent's limit holds for its children). cgroup v2 writes it as `cpu.max` ("QUOTA PERIOD" or
"max PERIOD"), v1 as `cpu.cfs_quota_us` (-1: none) over `cpu.cfs_period_us`.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
SELF_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class Hierarchy:
    """A mounted cgroup hierarchy that controls CPU time, and this process's cgroup folder in it."""
    version: int  # 1 or 2
    mount_point: Path
    cgroup_dir: Path


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` ("150000 100000" -> 1.5); None when it says "max"."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    quota, period = int(fields[0]), int(fields[1])
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_quota(quota_text: str, period_text: str) -> float | None:
    """CPUs allowed by cgroup v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us`; None for a quota of -1."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def _unescape(field: str) -> str:
    """mountinfo writes spaces, tabs, newlines and backslashes in paths as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def _inside(path: str, root: str) -> str:
    """`path` (from /proc/self/cgroup) relative to a mount's root; "/" when the mount does not show that path (a
    container whose cgroup is mounted as the hierarchy's top)."""
    if root == "/":
        return path
    if path == root or path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")):] or "/"
    return "/"


def cpu_hierarchies(mountinfo: str, self_cgroup: str) -> list[Hierarchy]:
    """The hierarchies that can limit CPU time, from the texts of /proc/self/mountinfo and /proc/self/cgroup."""
    v1_path, v2_path = None, None
    for line in self_cgroup.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        root, mount_point = _unescape(fields[3]), Path(_unescape(fields[4]))
        fstype, super_options = fields[separator + 1], fields[separator + 3] if len(fields) > separator + 3 else ""
        if fstype == "cgroup2" and v2_path is not None:
            version, path = 2, v2_path
        elif fstype == "cgroup" and v1_path is not None and "cpu" in super_options.split(","):
            version, path = 1, v1_path
        else:
            continue
        found.append(Hierarchy(version, mount_point, mount_point / _inside(path, root).lstrip("/")))
    return found


def _quota_of(folder: Path, version: int) -> float | None:
    try:
        if version == 2:
            return parse_cpu_max((folder / "cpu.max").read_text())
        return parse_cfs_quota((folder / "cpu.cfs_quota_us").read_text(), (folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):  # no such file at this level (the root cgroup has none), or not a number
        return None


def hierarchy_limit(hierarchy: Hierarchy) -> float | None:
    """The smallest quota from this process's cgroup up to the hierarchy's mount point."""
    limits = []
    folder = hierarchy.cgroup_dir
    while True:
        quota = _quota_of(folder, hierarchy.version)
        if quota is not None:
            limits.append(quota)
        if folder == hierarchy.mount_point or hierarchy.mount_point not in folder.parents:
            break
        folder = folder.parent
    return min(limits, default=None)


def cgroup_cpu_limit(mountinfo: str | None = None, self_cgroup: str | None = None) -> float | None:
    """CPUs this process's cgroups allow (may be fractional), or None when no quota is set or none can be read."""
    try:
        mountinfo = MOUNTINFO.read_text() if mountinfo is None else mountinfo
        self_cgroup = SELF_CGROUP.read_text() if self_cgroup is None else self_cgroup
    except OSError:  # not Linux, or /proc not mounted
        return None
    limits = [limit for hierarchy in cpu_hierarchies(mountinfo, self_cgroup)
              if (limit := hierarchy_limit(hierarchy)) is not None]
    return min(limits, default=None)


def cpus_within(affinity: int, quota: float | None) -> int:
    """Whole CPUs to plan for: the affinity, capped by the quota rounded up (1.5 CPUs of quota run two threads at
    75 %, as the JVM and Go count it)."""
    return affinity if quota is None else max(1, min(affinity, math.ceil(quota)))


def usable_cpus() -> int:
    """The CPUs this process may keep busy, from its affinity and its cgroup quota."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus_within(affinity, cgroup_cpu_limit())
