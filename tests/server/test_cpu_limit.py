"""Gateway workers follow the CPUs a container may use (server/cpu_limit.py): cgroup v2 `cpu.max` and v1 CFS quotas
read from cgroup folders laid out as the kernel lays them out (temporary folders named by a mountinfo text), the
smallest limit on the way up binding, and the affinity capping it all."""
from __future__ import annotations

import os
from pathlib import Path

from server.cpu_limit import (
    Hierarchy,
    cgroup_cpu_limit,
    cpu_hierarchies,
    cpus_within,
    parse_cfs_quota,
    parse_cpu_max,
    usable_cpus,
)
from server.workers import default_workers

# The lines of /proc/self/mountinfo that matter, as a Docker host (v1) and a Kubernetes node (v2) write them.
V2_MOUNT = "35 24 0:30 {root} {point} rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = ("40 31 0:35 {root} {point} rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup "
            "rw,cpu,cpuacct\n")
V1_MEMORY = "41 31 0:36 / {point} rw,relatime shared:17 - cgroup cgroup rw,memory\n"
PROC_ROOT = "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"


def folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name.replace("_", ".", 1)).write_text(text + "\n")
    return path


def test_cpu_max_and_cfs_quota_in_cpus():
    assert parse_cpu_max("150000 100000") == 1.5
    assert parse_cpu_max("max 100000") is None
    assert parse_cfs_quota("200000", "100000") == 2.0
    assert parse_cfs_quota("-1", "100000") is None


def test_a_v2_container_limited_to_one_and_a_half_cpus(tmp_path):
    # Docker with a cgroup namespace: the container's cgroup is the mount's top, and /proc/self/cgroup says "/".
    folder(tmp_path / "cgroup", cpu_max="150000 100000")
    mountinfo = PROC_ROOT + V2_MOUNT.format(root="/", point=tmp_path / "cgroup")
    assert cgroup_cpu_limit(mountinfo, "0::/\n") == 1.5
    assert cpus_within(64, cgroup_cpu_limit(mountinfo, "0::/\n")) == 2  # rounded up: two threads at 75 %


def test_v2_the_smallest_limit_from_the_process_up_binds(tmp_path):
    # A Kubernetes pod: the pod's cgroup holds the limit (2 CPUs), the container's below it has none of its own.
    root = folder(tmp_path / "cgroup")
    pod = folder(root / "kubepods.slice" / "pod-1", cpu_max="200000 100000")
    folder(pod / "container-a", cpu_max="max 100000")
    mountinfo = V2_MOUNT.format(root="/", point=root)
    assert cgroup_cpu_limit(mountinfo, "0::/kubepods.slice/pod-1/container-a\n") == 2.0
    folder(pod / "container-a", cpu_max="50000 100000")  # a tighter limit of its own wins
    assert cgroup_cpu_limit(mountinfo, "0::/kubepods.slice/pod-1/container-a\n") == 0.5


def test_v1_cfs_quota_of_a_container_whose_mount_root_is_its_cgroup(tmp_path):
    # cgroup v1 without a namespace: /proc/self/cgroup names the host path, the mount's root is that same path.
    cpu = folder(tmp_path / "cpu,cpuacct", cpu_cfs_quota_us="300000", cpu_cfs_period_us="100000")
    mountinfo = (V1_MOUNT.format(root="/docker/abc", point=tmp_path / "cpu,cpuacct")
                 + V1_MEMORY.format(point=tmp_path / "memory"))
    self_cgroup = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/system.slice\n"
    [hierarchy] = cpu_hierarchies(mountinfo, self_cgroup)
    assert hierarchy == Hierarchy(1, cpu, cpu)
    assert cgroup_cpu_limit(mountinfo, self_cgroup) == 3.0


def test_no_quota_anywhere_leaves_the_affinity(tmp_path):
    # This machine's shape: v1 cpu with quota -1, a unified v2 hierarchy without the cpu controller.
    folder(tmp_path / "cpu", cpu_cfs_quota_us="-1", cpu_cfs_period_us="100000")
    folder(tmp_path / "unified")
    mountinfo = (V1_MOUNT.format(root="/", point=tmp_path / "cpu")
                 + V2_MOUNT.format(root="/", point=tmp_path / "unified"))
    assert cgroup_cpu_limit(mountinfo, "1:cpu:/\n0::/\n") is None
    assert cgroup_cpu_limit(PROC_ROOT, "0::/\n") is None  # no cgroup mounted at all
    assert cpus_within(6, None) == 6


def test_the_affinity_caps_a_larger_quota_and_a_tiny_quota_still_gets_one_cpu():
    assert cpus_within(4, 16.0) == 4
    assert cpus_within(4, 0.1) == 1


def test_default_workers_are_half_the_usable_cpus_one_to_eight():
    assert [default_workers(cores) for cores in (1, 2, 3, 8, 64)] == [1, 1, 1, 4, 8]
    # On this machine, whatever its limits: never more workers than half the CPUs it may use.
    usable = usable_cpus()
    assert 1 <= usable <= len(os.sched_getaffinity(0))
    assert default_workers() == max(1, min(usable // 2, 8))
