"""How much memory can this process still take: the RAM the kernel says is
available, or less when a cgroup (a container, systemd-run, a batch
scheduler) caps the memory of this process.

Imports nothing from the project and no TensorFlow, so config.py can
compare a run's needs with it before anything starts (and before a run
folder exists).
"""

import os

GIB = 2**30

# cgroup v2 writes "max" for no limit; v1 a number near 2**63.
NO_LIMIT = 2**60


def _read_number(path):
    """The integer in the file `path`, or None (missing, unreadable, "max")."""
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available(meminfo_path):
    """MemAvailable of /proc/meminfo in bytes (free memory plus the page
    cache the kernel can drop), or None where there is no such file."""
    try:
        with open(meminfo_path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sysconf_available():
    """Free physical memory from os.sysconf (no page cache counted), or None."""
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") or os.sysconf("SC_PHYS_PAGES")
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cgroup_room(cgroup_root):
    """(bytes left under the cgroup memory limit, the limit) of this
    process's cgroup mounted at `cgroup_root` (v2: memory.max minus
    memory.current; v1: memory/memory.limit_in_bytes minus usage), or None
    when there is no limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        (os.path.join("memory", "memory.limit_in_bytes"), os.path.join("memory", "memory.usage_in_bytes")),
    ):
        limit = _read_number(os.path.join(cgroup_root, limit_file))
        if limit is not None and limit < NO_LIMIT:
            usage = _read_number(os.path.join(cgroup_root, usage_file)) or 0
            return max(0, limit - usage), limit
    return None


def available(meminfo_path="/proc/meminfo", cgroup_root="/sys/fs/cgroup"):
    """(bytes this process can still take, where that number comes from):
    the smaller of the RAM available (MemAvailable, else os.sysconf) and
    what is left under a cgroup memory limit. None for the bytes when
    neither can be read."""
    ram = _meminfo_available(meminfo_path)
    if ram is None:
        ram = _sysconf_available()
    room = cgroup_room(cgroup_root)
    if room is not None and (ram is None or room[0] < ram):
        return room[0], f"left under this process's memory limit of {room[1] / GIB:.1f} GiB"
    return ram, "of RAM available"
