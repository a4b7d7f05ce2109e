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


def own_cgroups(proc_cgroup):
    """{"v2": path, "v1": path} of this process's cgroups from
    /proc/self/cgroup ("0::/path" for v2, "N:memory:/path" for v1's memory
    controller); {} when it cannot be read."""
    found = {}
    try:
        with open(proc_cgroup, encoding="utf-8") as handle:
            for line in handle:
                number, controllers, path = line.rstrip("\n").split(":", 2)
                if number == "0" and not controllers:
                    found["v2"] = path
                elif "memory" in controllers.split(","):
                    found["v1"] = path
    except (OSError, ValueError):
        return {}
    return found


def _folders_up(root, path):
    """root/path and each folder above it, up to root itself."""
    folders = [root]
    for part in [part for part in path.split("/") if part]:
        folders.append(os.path.join(folders[-1], part))
    return reversed(folders)


def cgroup_room(cgroup_root, proc_cgroup="/proc/self/cgroup"):
    """(bytes left under the tightest cgroup memory limit, that limit) of
    this process's cgroup and those above it, mounted at `cgroup_root`
    (v2: memory.max minus memory.current; v1: memory/memory.limit_in_bytes
    minus memory.usage_in_bytes), or None when there is no limit. A limit
    set on a parent (systemd-run -p MemoryMax=, a container) counts too."""
    own = own_cgroups(proc_cgroup)
    places = [(folder, "memory.max", "memory.current") for folder in _folders_up(cgroup_root, own.get("v2", ""))]
    places += [
        (folder, "memory.limit_in_bytes", "memory.usage_in_bytes")
        for folder in _folders_up(os.path.join(cgroup_root, "memory"), own.get("v1", ""))
    ]
    tightest = None
    for folder, limit_file, usage_file in places:
        limit = _read_number(os.path.join(folder, limit_file))
        if limit is None or limit >= NO_LIMIT:
            continue
        room = max(0, limit - (_read_number(os.path.join(folder, usage_file)) or 0))
        if tightest is None or room < tightest[0]:
            tightest = (room, limit)
    return tightest


def available(meminfo_path="/proc/meminfo", cgroup_root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """(bytes this process can still take, where that number comes from):
    the smaller of the RAM available (MemAvailable, else os.sysconf) and
    what is left under a cgroup memory limit. None for the bytes when
    neither can be read."""
    ram = _meminfo_available(meminfo_path)
    if ram is None:
        ram = _sysconf_available()
    room = cgroup_room(cgroup_root, proc_cgroup)
    if room is not None and (ram is None or room[0] < ram):
        return room[0], f"left under this process's memory limit of {room[1] / GIB:.1f} GiB"
    return ram, "of RAM available"


def has_nvidia_gpu(gpus_folder="/proc/driver/nvidia/gpus"):
    """Whether the NVIDIA driver lists a GPU (read without starting
    TensorFlow): a run there keeps its activations in the GPU's memory,
    not in the RAM `available` measures."""
    try:
        return bool(os.listdir(gpus_folder))
    except OSError:
        return False
