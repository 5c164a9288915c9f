"""Established TCP connections a process holds, read from /proc (Linux): how connections spread over a server's
workers (tests/test_server_lifecycle.py, bench/spread.py)."""

from __future__ import annotations

import os


def established(pid: int, port: int) -> int:
    """Established TCP connections to ``port`` whose server side process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()  # sl, local address, remote address, state, …, inode (10th)
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count
