"""Long jobs (training, prediction, GrabCut) as generators of :class:`Progress` events, and the
one loop that runs any of them to its end.

A job is a generator: it yields :class:`Progress` events (a job may yield a subclass with
more fields, e.g. training's ``TrainEvent``) and *returns* its result (``result = yield from
job`` inside another job; ``StopIteration.value``, which napari's ``thread_worker`` emits as
``returned``). A consumer shows any job's progress from ``phase``, ``done`` and ``total``
without knowing which job it is.

Cancel, the one way: ``should_stop()`` is asked at each event (by :func:`drive`, by
:func:`stoppable`, and by a job function given ``should_stop``). When it returns True,
:class:`Cancelled` is thrown into the job at the ``yield`` of that event, once: the job ends at
that safe point. Every job then *returns* what it has where a part is of use: training its
checkpoint so far (``TrainResult.stopped`` True), GrabCut the map of the objects done so far;
or it lets :class:`Cancelled` propagate when nothing partial is of use (prediction, which also
asks ``should_stop`` between the network passes of a batch). Closing the generator
(``worker.quit()`` of a napari worker, ``close()``) abandons a job without its result.

This module imports only the standard library (the widgets import it on the GUI thread).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

PHASE_SECONDS = 0.05
"""Long post-processing loops yield a :class:`Progress` at least this often (seconds of work),
so a Stop takes effect and the progress moves while they run."""


class Cancelled(RuntimeError):
    """A job ended by ``should_stop()`` with nothing partial to return (prediction)."""


PredictionCancelled = Cancelled
"""The name prediction used before every job shared :class:`Cancelled`."""


@dataclass(frozen=True)
class Progress:
    """One progress event of a job.

    Attributes:
        phase: what the job is doing: ``"tiles"``, ``"resizing"``, ``"classes"``,
            ``"instances"`` (prediction), ``"objects"`` (GrabCut), ``"start"``, ``"step"``,
            ``"validation"``, ``"checkpoint"``, ``"warning"``, ``"done"`` (training).
        done: units of the phase done (tiles, row bands, components, objects, iterations).
        total: units of the phase, ``None`` when unknown (training on a time budget); for
            ``"instances"`` the components found so far (the count grows class by class).
    """

    phase: str
    done: int
    total: int | None


PredictPhase = Progress
"""The name of prediction's phase events before every job shared :class:`Progress`."""

Job = Generator[Progress, Any, T]


def stoppable(job: Job[T], should_stop: Callable[[], bool] | None = None) -> Job[T]:
    """``job`` that asks ``should_stop()`` at each of its events.

    Re-yields the job's events; when ``should_stop()`` returns True after an event (or an
    outer driver throws :class:`Cancelled` into this generator), throws :class:`Cancelled`
    into the job at that event's ``yield``, once (see the module docstring); a job that
    catches it runs on to its result, whose events are re-yielded too. Returns the job's
    result; the job is closed when this ends.
    """
    asked = False
    try:
        event = next(job)
        while True:
            try:
                yield event
                stop = should_stop is not None and should_stop()
            except Cancelled:  # asked by an outer driver
                stop = True
            if stop and not asked:
                asked = True
                event = job.throw(Cancelled("Stopped at a should_stop request."))
            else:
                event = next(job)
    except StopIteration as end:
        return end.value
    finally:
        job.close()


def mapped(job: Job[T], fn: Callable[[Progress], Progress]) -> Job[T]:
    """``job`` with each event replaced by ``fn(event)`` (e.g. counted within a larger job);
    a :class:`Cancelled` thrown in reaches the job; returns the job's result."""
    try:
        event = next(job)
        while True:
            try:
                yield fn(event)
            except Cancelled as e:
                event = job.throw(e)
            else:
                event = next(job)
    except StopIteration as end:
        return end.value
    finally:
        job.close()


def drive(
    job: Job[T],
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> T:
    """Run a job to its end and return its result.

    Args:
        job: the generator; closed when this returns or raises.
        progress: called with every event.
        should_stop: asked after every event (after ``progress``); see the module docstring.

    Returns:
        the job's return value.

    Raises:
        Cancelled: ``should_stop()`` returned True and the job has nothing partial to return.
    """
    gen = stoppable(job, should_stop)
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as end:
                return end.value
            if progress is not None:
                progress(event)
    finally:
        gen.close()
