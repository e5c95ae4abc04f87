"""Long jobs as generators of small progress events, and the loop that runs one to its end.

A job is a generator: it yields progress events and *returns* its result (``result = yield
from job`` inside another job). Two kinds of event:

* ``(done, total)`` tuples: counted units of the main work (tiles of a prediction);
* :class:`PredictPhase`: a named step after it (resizing, classes, instances).

A widget runs a job in a worker thread whose ``quit()`` closes the generator at the next
yield; a caller without a thread runs it with :func:`drive`, which reports the tuples to
``progress`` and stops when ``should_stop()`` turns True. This module imports only the standard
library.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

PHASE_SECONDS = 0.05
"""Long post-processing loops yield a :class:`PredictPhase` at least this often (seconds of
work), so a Stop takes effect and the progress moves while they run."""


class PredictionCancelled(RuntimeError):
    """Raised when ``should_stop()`` returned True during a prediction."""


@dataclass(frozen=True)
class PredictPhase:
    """A progress event of a step after the tiles, yielded by
    :meth:`~napari_lazylabels.core.predictor.Predictor.predict_iter` (and the instance step's
    generator) so that a consumer can show every phase and stop in it.

    Not a tuple, so consumers of the ``(done_tiles, total_tiles)`` protocol (:func:`drive`'s
    ``progress``) skip it; ``should_stop`` is still checked at each one.

    Attributes:
        phase: ``"resizing"`` (working-scale maps back to the image's size), ``"classes"``
            (the argmax) or ``"instances"`` (cutting objects).
        done: units of the phase done (row bands; connected components for ``"instances"``).
        total: units of the phase (for ``"instances"`` the components found so far: the
            count grows class by class).
    """

    phase: str
    done: int
    total: int


def drive(
    gen: Generator[Any, Any, T],
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[..., None] | None = None,
) -> T:
    """Run a job generator to its end and return its result.

    Args:
        gen: the job; closed when this returns or raises.
        should_stop: checked after every event; when it returns True
            :class:`PredictionCancelled` is raised.
        progress: called with ``(done, total)`` for every tuple event (other events are
            skipped).

    Returns:
        the generator's return value.
    """
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if isinstance(event, tuple) and progress is not None:
                progress(*event)
            if should_stop is not None and should_stop():
                raise PredictionCancelled("Prediction cancelled.")
    finally:
        gen.close()
