"""Ray's head, watched while a sweep trains.

When the GCS server or the raylet of a run's Ray instance dies, Ray's driver waits a
minute, prints its own log lines and exits from C++ code: no Python cleanup runs, the
store's lock stays behind and Ray's agents live on as orphans. The watchdog notices
the death within a second, and hands the run one message and a way to end every
process the run started (recorded as they appear: after the head's death they are
reparented and no longer found under the driver).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType

# Ray's process types whose death ends a run, as Ray's node records them.
HEAD_PROCESSES = {
    'gcs_server': "Ray's head process (the GCS server)",
    'raylet': "Ray's node process (the raylet)",
}
# A joined cluster's head is another machine's: lost when unreachable this long.
REMOTE_GRACE_SECONDS = 15.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a running process; None when it is gone
    (or a zombie: ended, waiting for its parent to read its exit)."""
    try:
        text = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return None
    fields = text[text.rindex(')') + 2 :].split()  # after the command, which may hold spaces
    if fields[0] in ('Z', 'X'):
        return None
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """{pid: start time} of every process below `pid` (Linux /proc)."""
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            found = _stat(int(entry))
            if found:
                parents.setdefault(found[0], []).append((int(entry), found[1]))
    below, todo = {}, [pid]
    while todo:
        for child, started in parents.get(todo.pop(), []):
            if child not in below:
                below[child] = started
                todo.append(child)
    return below


def end_processes(processes: Mapping[int, int]) -> None:
    """SIGKILL each of {pid: start time} that is still that same process."""
    for pid, started in processes.items():
        found = _stat(pid)
        if found and found[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _exit_description(code: int) -> str:
    return f'was killed by signal {-code}' if code < 0 else f'exited with code {code}'


class RayWatchdog:
    """Watches the head of the Ray instance this process is connected to.

    `on_lost(message)` is called once, from the watchdog's thread, when the head died;
    `end_started()` then ends every process this run started."""

    def __init__(
        self, ray: ModuleType, on_lost: Callable[[str], object], interval: float = 0.5
    ) -> None:
        from ray._private import worker

        node = worker._global_node
        self.head = [
            (HEAD_PROCESSES[kind], info.process)
            for kind in HEAD_PROCESSES
            for info in (node.all_processes.get(kind, []) if node else [])
        ]
        self.remote = None if self.head else ray.get_runtime_context().gcs_address
        self.on_lost, self.interval = on_lost, interval
        self.started = {}
        self._unreachable_since = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name='ray-watchdog', daemon=True)

    def lost(self) -> str | None:
        """Why the run's Ray head is gone (None while it lives)."""
        for what, process in self.head:
            code = process.poll()
            if code is not None:
                return f'{what}, pid {process.pid}, {_exit_description(code)}'
        if self.remote and not self._reachable():
            now = time.monotonic()
            self._unreachable_since = self._unreachable_since or now
            if now - self._unreachable_since >= REMOTE_GRACE_SECONDS:
                return (
                    f"Ray's head at {self.remote} has not answered for {REMOTE_GRACE_SECONDS:.0f}s"
                )
        elif self.remote:
            self._unreachable_since = None
        return None

    def _reachable(self) -> bool:
        host, _, port = self.remote.rpartition(':')
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except (OSError, ValueError):
            return False

    def end_started(self) -> None:
        """End every process this run started that is still running."""
        self.started.update(descendants(os.getpid()))
        end_processes(self.started)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.started.update(descendants(os.getpid()))
            message = self.lost()
            if message:
                self.on_lost(message)
                return

    def __enter__(self) -> RayWatchdog:
        self.started.update(descendants(os.getpid()))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
