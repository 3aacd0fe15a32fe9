"""One stop exception: whatever stopped the dispatcher, ``check`` raises ``WatcherStopped``."""

from __future__ import annotations

import pytest

from changestream_worker.errors import PermanentError, StopWatcher
from changestream_worker.stream.retry import Backoff
from changestream_worker.stream.stops import LeaseLost, WatcherStopped, stopped_by
from changestream_worker.testing.factories import make_event
from tests.stream.test_dispatch import Scripted, dispatcher


class TestStops:
    @pytest.mark.parametrize(
        ("cause", "expected", "fenced"),
        [
            (StopWatcher("maintenance"), True, False),
            (LeaseLost("lease gone"), True, True),
            (PermanentError("boom"), False, False),
        ],
    )
    def test_each_cause_maps_to_one_exception(
        self, cause: BaseException, expected: bool, fenced: bool
    ) -> None:
        """A handler's stop, a lost lease and a failure all become ``WatcherStopped``."""
        stop = stopped_by(cause)
        assert (stop.expected, stop.fenced) == (expected, fenced) and stop.__cause__ is cause

    async def test_check_raises_once_stopped(self) -> None:
        """``check`` is silent while running and raises after a handler stops the watcher."""

        async def stop(event: object, n: int) -> None:
            raise StopWatcher("enough")

        d = dispatcher(Scripted(stop))
        d.check()
        await d.submit(make_event(seq=1))
        assert await d.drain(5)
        with pytest.raises(WatcherStopped, match="enough") as info:
            d.check()
        assert info.value.expected and isinstance(info.value.__cause__, StopWatcher)
        await d.aclose()


class TestBackoff:
    def test_delays_grow_with_jitter_up_to_the_cap(self) -> None:
        """``initial·2ⁿ⁻¹`` plus up to ``initial`` of jitter, never above ``maximum``."""
        wait = Backoff(0.5, 3.0)
        for attempt, low in [(1, 0.5), (2, 1.0), (3, 2.0)]:
            assert low <= wait.delay(attempt) <= min(low + 0.5, 3.0)
        assert wait.delay(30) == 3.0
