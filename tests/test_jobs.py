"""The job protocol (core/jobs.py): one event type, one driver, one way to cancel."""

from __future__ import annotations

import pytest

from napari_lazylabels.core.jobs import Cancelled, PredictionCancelled, Progress, drive, stoppable


def counting(n: int):
    """A job with nothing partial of use: lets Cancelled propagate."""
    for i in range(1, n + 1):
        yield Progress("count", i, n)
    return "all"


def partial(n: int):
    """A job that returns what it has when stopped, with events after the stop."""
    done = 0
    try:
        for done in range(1, n + 1):
            yield Progress("count", done, n)
    except Cancelled:
        pass
    yield Progress("saving", 0, 1)
    return done


def test_drive_reports_every_event_and_returns_the_result():
    seen = []
    assert drive(counting(3), seen.append) == "all"
    assert seen == [Progress("count", i, 3) for i in (1, 2, 3)]


def test_a_job_without_a_partial_result_raises_cancelled():
    seen = []
    with pytest.raises(PredictionCancelled):  # the old name is the same exception
        drive(counting(5), seen.append, should_stop=lambda: len(seen) >= 2)
    assert [e.done for e in seen] == [1, 2]
    assert PredictionCancelled is Cancelled


def test_a_job_with_a_partial_result_returns_it_and_is_asked_once():
    seen, asked = [], []

    def stop():
        asked.append(1)
        return len(seen) >= 2

    assert drive(partial(5), seen.append, should_stop=stop) == 2
    assert [e.phase for e in seen] == ["count", "count", "saving"]


def test_stoppable_composes_with_an_outer_driver():
    """A job given should_stop (stoppable inside) under a driver with the same should_stop:
    the job is asked once and still returns what it has."""
    seen = []

    def stop():
        return len(seen) >= 3

    assert drive(stoppable(partial(10), stop), seen.append, should_stop=stop) == 3
    assert seen[-1].phase == "saving"
