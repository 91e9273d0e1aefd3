"""Waiting, in one place: until a condition holds (``wait_until``, the one poll-until-deadline loop), until a rate
allows more work (``Pacer``), whether a loopback port answers, and a free port for a server to bind later."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    *,
    timeout_s: float,
    interval_s: float = 0.1,
    what: str | Callable[[], str] = "the condition",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``condition`` until it returns something truthy, and return that; ``TimeoutError`` naming ``what`` (a
    text, or a function giving one, e.g. the state last seen) once ``timeout_s`` has passed. An exception from
    ``condition`` ends the wait at once."""
    deadline = clock() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if clock() >= deadline:
            raise TimeoutError(f"{what() if callable(what) else what} within {timeout_s:g} s")
        sleep(interval_s)


def backoff_s(attempt: int, *, base_s: float = 0.05, cap_s: float = 2.0) -> float:
    """Exponential backoff with full jitter: the pause before retry ``attempt`` (0-based) of throttled work."""
    return random.uniform(0, min(cap_s, base_s * 2**attempt))


class Pacer:
    """Keeps work at ``rate`` units per second: after each piece, ``pace(units)`` sleeps until the next is due.

    A stall longer than ``max_lag_s`` is not made up for with a burst. ``rate`` may change between pieces (a
    producer's target), and ``sleep`` may be an event's ``wait`` so that a stop interrupts the pause.
    """

    def __init__(
        self,
        rate: float,
        *,
        max_lag_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ):
        self.rate, self.max_lag_s, self.clock, self.sleep = rate, max_lag_s, clock, sleep
        self.due = clock()

    def pace(self, units: float) -> None:
        now = self.clock()
        self.due = max(self.due + units / max(self.rate, 1e-9), now - self.max_lag_s)
        if self.due > now:
            self.sleep(self.due - now)


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")  # Linux: the ports outgoing connections take
LOWEST_FREE_PORT = 10_000
PORT_PROBES = 200


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing holds now, for a server that binds it later. Below the kernel's ephemeral range where it has
    one (Linux): a port from that range can meanwhile become the local end of an outgoing connection (the embedded
    AWS keeps its clients' connections open), and the server's bind then fails."""
    lowest_ephemeral = _lowest_ephemeral_port()
    if lowest_ephemeral is not None and lowest_ephemeral - LOWEST_FREE_PORT >= PORT_PROBES:
        for port in random.sample(range(LOWEST_FREE_PORT, lowest_ephemeral), PORT_PROBES):
            if _bindable(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _lowest_ephemeral_port() -> int | None:
    try:
        return int(EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def port_in_use(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout_s)
        return probe.connect_ex((host, port)) == 0
