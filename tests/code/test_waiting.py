"""The one poll-until-deadline loop and the rate pacer, on an injected clock (no real sleeps); free ports."""

from __future__ import annotations

import socket

import pytest

from cluster.waiting import EPHEMERAL_PORTS, LOWEST_FREE_PORT, Pacer, free_port, wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_wait_until_returns_the_first_truthy_value() -> None:
    clock, answers = FakeClock(), iter([None, 0, "ready"])
    assert wait_until(lambda: next(answers), timeout_s=5, interval_s=0.5, clock=clock, sleep=clock.sleep) == "ready"
    assert clock.slept == [0.5, 0.5]


def test_wait_until_times_out_naming_what_it_waited_for() -> None:
    clock = FakeClock()
    with pytest.raises(TimeoutError, match=r"port 8000 free within 2 s"):
        wait_until(lambda: False, timeout_s=2, interval_s=0.5, what="port 8000 free", clock=clock, sleep=clock.sleep)
    assert clock.now == pytest.approx(102.0)


def test_wait_until_stops_at_once_when_the_condition_raises() -> None:
    clock = FakeClock()

    def broken() -> bool:
        raise RuntimeError("the server exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait_until(broken, timeout_s=60, clock=clock, sleep=clock.sleep)
    assert clock.slept == []


def test_pacer_keeps_the_rate_and_counts_the_work_time() -> None:
    clock = FakeClock()
    pacer = Pacer(100.0, clock=clock, sleep=clock.sleep)
    clock.now += 0.2  # 50 units took 0.2 s of work: 0.3 s left of their 0.5 s
    pacer.pace(50)
    pacer.pace(100)  # no work time: the whole second
    assert clock.slept == [0.3, 1.0]


def test_pacer_does_not_burst_after_a_stall_beyond_its_lag() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, max_lag_s=0.0, clock=clock, sleep=clock.sleep)
    clock.now += 5.0  # far behind: no catching up
    pacer.pace(1)
    assert clock.slept == []
    pacer.pace(1)  # the next unit is due a tenth of a second later
    assert clock.slept == [0.1]


def test_a_free_port_is_bindable_and_never_one_an_outgoing_connection_could_take() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", port))
    if EPHEMERAL_PORTS.exists():
        assert LOWEST_FREE_PORT <= port < int(EPHEMERAL_PORTS.read_text().split()[0])
