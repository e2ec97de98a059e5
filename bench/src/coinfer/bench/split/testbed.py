"""A slow device and a shaped link on one machine, for measuring split inference end to end.

Why: a split plan is only as good as its prediction of ``device + transfer + edge`` time,
and that is only tested on a device that really is slower than the edge and a link that
really is narrow. On a Linux machine where we are root this module makes both:

- :func:`cpu_quota`: a cgroup v1 ``cpu`` group (``/sys/fs/cgroup/cpu/NAME``) whose
  ``cpu.cfs_quota_us`` is ``fraction x cpu.cfs_period_us``; a process written into its
  ``cgroup.procs`` gets that share of one core. The period is as short as the kernel allows
  (the quota must be >= 1 ms, so 4 ms for a quarter core): with a long period a short head
  would run at full speed on a fresh quota and a long one at a quarter, and the device
  would not be uniformly slower.
- :func:`shaped_link`: a network namespace ``coinfer-split-<pid>-<n>`` whose loopback
  (MTU set to 1500, so that a token bucket of a few packets is honest at 0.5 Mbit/s) goes
  through ``tc qdisc ... tbf``; :meth:`ShapedLink.set_rate` changes the rate between sweep
  points. Both the device and the edge process run inside it (``ip netns exec``), so every
  byte each way crosses the bucket. ``netem`` is not available in this kernel, so no delay is
  added: the round-trip time is measured and reported, not set.

Where either is unavailable (not root, no cgroup v1 ``cpu``, no ``ip``/``tc``, or the kernel
refuses), :func:`testbed` falls back and says so in :meth:`Testbed.describe`: no quota
(``"device_quota": None`` and a reason) and a :class:`PacedLink` (``"shaping": "paced"``),
where the device worker sleeps ``bytes x 8 / rate`` for what it sends and receives.
Both are removed on exit, also after an error: the workers are stopped first, then any
process left in the cgroup or namespace (only ours are there) is moved out or killed by PID.

Example::

    with testbed(10.0, quota=0.25, work_dir=work) as bed:
        edge = bed.start_edge([sys.executable, "-m", "coinfer.bench.split.edge_worker"])
        device = bed.start_device([sys.executable, "-m", "coinfer.bench.split.device_worker"])
        bed.set_rate(0.5)
        print(bed.describe())    # {"shaping": "tbf", "device_quota": 0.25, ...}
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coinfer.bench.split.worker_io import WorkerProcess
from coinfer.sdk.errors import CoinferError, InvalidArgumentError, one_line

#: Where cgroup v1 mounts the ``cpu`` controller.
CGROUP_CPU_ROOT = Path("/sys/fs/cgroup/cpu")
#: The kernel's least quota (and period) in microseconds.
MIN_QUOTA_US = 1000
MAX_PERIOD_US = 1_000_000
#: The MTU given to the namespace's loopback, and the bytes a 1500-byte packet occupies there.
LINK_MTU = 1500
PACKET_BYTES = LINK_MTU + 14
#: The bucket holds one packet, or 0.5 ms at the rate if more (at 50 Mbit/s a one-packet
#: bucket loses a tenth of the rate to timer granularity). What it holds passes at once
#: after an idle moment: one packet is 24 ms at 0.5 Mbit/s, the least tbf allows.
BURST_PACKETS, BURST_SECONDS = 1, 0.0005
#: Queue room: never drop a packet of one request (drops would add TCP timeouts, not bandwidth).
QUEUE_LIMIT_BYTES = 8 << 20
PREFIX = "coinfer-split"
_counter = itertools.count()


class TestbedError(CoinferError):
    """A quota cgroup or shaped namespace that could not be made, changed or removed."""

    __test__ = False  # not a pytest test class, despite the name


def paced_delay_s(nbytes: int, rate_mbit: float) -> float:
    """Seconds ``nbytes`` take on a link of ``rate_mbit`` megabits per second: what the paced
    fallback sleeps."""
    if not rate_mbit > 0 or nbytes < 0:
        raise InvalidArgumentError(f"pacing needs rate > 0 and bytes >= 0, got {rate_mbit} Mbit/s and "
                                   f"{nbytes} B")
    return nbytes * 8 / (rate_mbit * 1e6)


def tbf_parameters(rate_mbit: float) -> tuple[int, int]:
    """(burst, limit) in bytes of the token bucket for ``rate_mbit``: the burst is at least
    :data:`BURST_PACKETS` packets (tbf drops a packet larger than its bucket) and small at
    low rates so that shaping is honest (a 32 kB burst would hide half a second at 0.5 Mbit/s)."""
    if not rate_mbit > 0:
        raise InvalidArgumentError(f"the link rate must be > 0 Mbit/s, got {rate_mbit}")
    burst = max(BURST_PACKETS * PACKET_BYTES, int(rate_mbit * 1e6 / 8 * BURST_SECONDS))
    return burst, QUEUE_LIMIT_BYTES


def quota_period_us(fraction: float) -> int:
    """The shortest CFS period whose quota ``fraction x period`` the kernel accepts (>= 1 ms)."""
    if not 0 < fraction <= 64:
        raise InvalidArgumentError(f"the CPU quota is a fraction of a core in (0, 64], got {fraction}")
    return min(MAX_PERIOD_US, max(MIN_QUOTA_US, int(-(-MIN_QUOTA_US // fraction))))


def _run(argv: Sequence[str], what: str) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TestbedError(f"{what}: {one_line(error)}") from error
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).split())
        raise TestbedError(f"{what}: {' '.join(argv[:6])} failed: {said}")
    return done.stdout


def _kill(pid: int) -> None:
    """End one process of ours by its PID."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


# --- the CPU quota -------------------------------------------------------------------------


class CpuQuota:
    """A cgroup v1 ``cpu`` group limiting its processes to ``fraction`` of one core."""

    def __init__(self, fraction: float, *, name: str | None = None, root: Path = CGROUP_CPU_ROOT) -> None:
        self.fraction = float(fraction)
        self.period_us = quota_period_us(self.fraction)
        self.quota_us = round(self.fraction * self.period_us)
        self.root = Path(root)
        self.path = self.root / (name or f"{PREFIX}-{os.getpid()}-{next(_counter)}")
        try:
            self.path.mkdir()
        except OSError as error:
            raise TestbedError(f"cannot make the cgroup {self.path}: {one_line(error)}") from error
        try:
            # Period first: a new group has no quota (-1), so any period is accepted.
            (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        except OSError as error:
            self.remove()
            raise TestbedError(f"cannot set the quota of {self.path}: {one_line(error)}") from error

    def add(self, pid: int) -> None:
        """Move ``pid`` (all its threads) into the group."""
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except OSError as error:
            raise TestbedError(f"cannot move process {pid} into {self.path}: {one_line(error)}") from error

    def pids(self) -> list[int]:
        try:
            return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def throttled(self) -> dict[str, int]:
        """The kernel's ``cpu.stat`` of the group (periods, throttled periods, throttled ns)."""
        try:
            lines = (self.path / "cpu.stat").read_text().splitlines()
        except OSError:
            return {}
        return {key: int(value) for key, value in (line.split() for line in lines if line.strip())}

    def remove(self) -> None:
        """Move every process out (to the parent group), kill any that will not move, remove
        the group; retried briefly, since a killed process leaves the group asynchronously."""
        if not self.path.exists():
            return
        for pid in self.pids():
            try:
                (self.root / "cgroup.procs").write_text(str(pid))
            except OSError:
                _kill(pid)
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        raise TestbedError(f"cannot remove the cgroup {self.path}; remove it with rmdir")


@contextlib.contextmanager
def cpu_quota(fraction: float = 0.25, *, name: str | None = None,
              root: Path = CGROUP_CPU_ROOT) -> Iterator[CpuQuota]:
    """A :class:`CpuQuota`, removed on exit even after an error."""
    quota = CpuQuota(fraction, name=name, root=root)
    try:
        yield quota
    finally:
        quota.remove()


# --- the link ------------------------------------------------------------------------------


class ShapedLink:
    """A network namespace whose loopback is shaped by a token bucket (tbf)."""

    shaping = "tbf"

    def __init__(self, rate_mbit: float, *, name: str | None = None) -> None:
        self.name = name or f"{PREFIX}-{os.getpid()}-{next(_counter)}"
        self.rate_mbit = float(rate_mbit)
        tbf_parameters(self.rate_mbit)  # checks the rate before anything is made
        _run(["ip", "netns", "add", self.name], "cannot make a network namespace")
        try:
            self._ip("link", "set", "lo", "mtu", str(LINK_MTU))
            self._ip("link", "set", "lo", "up")
            self._qdisc("add", self.rate_mbit)
        except TestbedError:
            self.remove()
            raise

    def _ip(self, *args: str) -> str:
        return _run(["ip", "netns", "exec", self.name, "ip", *args], f"namespace {self.name}")

    def _qdisc(self, verb: str, rate_mbit: float) -> None:
        burst, limit = tbf_parameters(rate_mbit)
        _run(["ip", "netns", "exec", self.name, "tc", "qdisc", verb, "dev", "lo", "root", "tbf",
              "rate", f"{rate_mbit * 1000:.0f}kbit", "burst", str(burst), "limit", str(limit)],
             f"cannot shape the loopback of {self.name}")

    def set_rate(self, rate_mbit: float) -> None:
        """Change the rate (the bucket's burst follows it); the queue is empty between requests."""
        self._qdisc("replace", float(rate_mbit))
        self.rate_mbit = float(rate_mbit)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: the PID stays)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def pace_mbit(self) -> float | None:
        """The rate a worker must pace at itself: none, the kernel shapes."""
        return None

    def pids(self) -> list[int]:
        try:
            return [int(pid) for pid in _run(["ip", "netns", "pids", self.name], "list").split()]
        except TestbedError:
            return []

    def describe(self) -> dict[str, Any]:
        burst, limit = tbf_parameters(self.rate_mbit)
        return {"namespace": self.name, "mtu": LINK_MTU, "tbf_burst_bytes": burst, "tbf_limit_bytes": limit}

    def remove(self) -> None:
        """Kill what is left inside (our workers only live there), then delete the namespace."""
        for pid in self.pids():
            _kill(pid)
        names = _run(["ip", "netns", "list"], "cannot list network namespaces")
        if any(line.split()[0] == self.name for line in names.splitlines() if line.split()):
            _run(["ip", "netns", "delete", self.name], f"cannot delete the namespace {self.name}")


class PacedLink:
    """The fallback link: plain loopback, and the device worker sleeps what the bytes would take."""

    shaping = "paced"

    def __init__(self, rate_mbit: float) -> None:
        tbf_parameters(rate_mbit)
        self.rate_mbit = float(rate_mbit)

    def set_rate(self, rate_mbit: float) -> None:
        tbf_parameters(rate_mbit)
        self.rate_mbit = float(rate_mbit)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def pace_mbit(self) -> float | None:
        return self.rate_mbit

    def delay_s(self, nbytes: int) -> float:
        return paced_delay_s(nbytes, self.rate_mbit)

    def describe(self) -> dict[str, Any]:
        return {"namespace": None}

    def remove(self) -> None:
        pass


@contextlib.contextmanager
def shaped_link(rate_mbit: float, *, name: str | None = None) -> Iterator[ShapedLink]:
    """A :class:`ShapedLink`, deleted on exit even after an error."""
    link = ShapedLink(rate_mbit, name=name)
    try:
        yield link
    finally:
        link.remove()


# --- both, with fallbacks ------------------------------------------------------------------


@dataclass(frozen=True)
class Support:
    """Why the quota or the shaping cannot be had here (``None``: it can be tried)."""

    quota: str | None
    shaping: str | None


def probe_support(privileged: bool | None = None, *, cgroup_root: Path = CGROUP_CPU_ROOT) -> Support:
    """What this machine allows. ``privileged=False`` answers as an unprivileged user would
    (for tests of the fallbacks); ``None`` asks the OS."""
    root = os.geteuid() == 0 if privileged is None else privileged
    if not root:
        why = "not root (a cgroup and a network namespace need root)"
        return Support(why, why)
    quota = None
    if not (cgroup_root / "cpu.cfs_quota_us").is_file():
        quota = f"no cgroup v1 cpu controller at {cgroup_root}"
    elif not os.access(cgroup_root, os.W_OK):
        quota = f"{cgroup_root} is not writable"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    shaping = f"{' and '.join(missing)} not found (iproute2)" if missing else None
    return Support(quota, shaping)


class Testbed:
    """A device quota (or none), a link (tbf or paced) and the worker processes inside them."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, link: ShapedLink | PacedLink, quota: CpuQuota | None, fraction: float,
                 reasons: Support, work_dir: Path) -> None:
        self.link, self.quota, self.fraction = link, quota, fraction
        self.reasons, self.work_dir = reasons, work_dir
        self.workers: list[WorkerProcess] = []

    @property
    def shaping(self) -> str:
        return self.link.shaping

    def set_rate(self, rate_mbit: float) -> None:
        self.link.set_rate(rate_mbit)

    def start_device(self, argv: Sequence[str], name: str = "device worker") -> WorkerProcess:
        """Start ``argv`` in the namespace, move it into the quota before it works, let it go."""
        return self._start(argv, name, quota=True)

    def start_edge(self, argv: Sequence[str], name: str = "edge worker") -> WorkerProcess:
        """Start ``argv`` in the namespace without a quota."""
        return self._start(argv, name, quota=False)

    def _start(self, argv: Sequence[str], name: str, quota: bool) -> WorkerProcess:
        log = self.work_dir / f"{name.replace(' ', '-')}-{next(_counter)}.log"
        worker = WorkerProcess(self.link.wrap(argv), log, name=name)
        self.workers.append(worker)
        pid = worker.wait_ready()
        if quota and self.quota is not None:
            for member in {worker.pid, pid}:
                self.quota.add(member)
        worker.go()
        return worker

    def describe(self) -> dict[str, Any]:
        """What the JSON says about the testbed: which shaping and quota really happened, and why not."""
        return {"shaping": self.link.shaping, "shaping_reason": self.reasons.shaping,
                "device_quota": self.fraction if self.quota is not None else None,
                "device_quota_reason": self.reasons.quota,
                "quota_period_us": self.quota.period_us if self.quota is not None else None,
                **self.link.describe()}

    def close(self) -> None:
        errors = []
        for worker in reversed(self.workers):
            try:
                worker.close()
            except Exception as error:  # keep closing the others, and still remove the cgroup
                errors.append(one_line(error))
        self.workers.clear()
        if errors:
            raise TestbedError(f"stopping the workers: {errors[0]}")


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit`` while the testbed exists (main thread only), so that a
    terminated bench still stops its workers and removes its cgroup and namespace."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def testbed(rate_mbit: float, quota: float | None = 0.25, *, work_dir: str | os.PathLike,
            privileged: bool | None = None) -> Iterator[Testbed]:
    """A :class:`Testbed` at ``rate_mbit`` with the device limited to ``quota`` of a core
    (``None``: no quota asked); falls back as the module describes. On exit the workers are
    stopped, then the cgroup and the namespace removed, also after an error."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    support = probe_support(privileged)
    quota_reason, shaping_reason = support.quota, support.shaping
    if quota is None:
        quota_reason = "no quota asked"
    with contextlib.ExitStack() as stack:
        stack.enter_context(_terminate_as_exit())
        group: CpuQuota | None = None
        if quota_reason is None and quota is not None:
            try:
                group = stack.enter_context(cpu_quota(quota))
            except TestbedError as error:
                quota_reason = str(error)
        link: ShapedLink | PacedLink
        if shaping_reason is None:
            try:
                link = stack.enter_context(shaped_link(rate_mbit))
            except TestbedError as error:
                shaping_reason, link = str(error), PacedLink(rate_mbit)
        else:
            link = PacedLink(rate_mbit)
        bed = Testbed(link, group, float(quota) if quota is not None else 0.0,
                      Support(quota_reason, shaping_reason), work)
        stack.callback(bed.close)
        yield bed


testbed.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite the name


__all__ = ["CpuQuota", "PacedLink", "ShapedLink", "Support", "Testbed", "TestbedError", "cpu_quota",
           "paced_delay_s", "probe_support", "quota_period_us", "shaped_link", "tbf_parameters", "testbed"]
