"""Progress output of the sweep and its Tune callback: what a person following a sweep
in a terminal is told, and when."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from bench.records import TrialRecord

# Epoch times of a network that the time left rests on: the latest few, so that a
# first epoch (which builds the network) or a slow spell fades out.
RECENT_EPOCHS = 5


def print_line(text: str) -> None:
    """Default progress output. A module function, since Tune pickles its callbacks and
    Ray may have replaced builtins.print by then (the original is then unpicklable)."""
    print(text, flush=True)


def stamped(text: str, clock: Callable[[], float] = time.time) -> str:
    """`text` after the wall-clock time, as each progress line starts."""
    return f'{time.strftime("%H:%M:%S", time.localtime(clock()))} {text}'


class SweepProgress:
    """Where a sweep stands: trials done and running of those it trains, and the time
    left, from the epochs reported so far.

    The time left counts, for every trial not ended, the epochs it has still to train
    (an epoch just reported is done, never counted again), each at the recent epoch
    time of its network (model and attention; of all networks where its own has none
    yet), spread over as many trials at once as have run at once so far (not over those
    running at this moment, which drop for an instant whenever one trial ends before the
    next starts), and never over more trials than are left. It is 0 when every trial has
    ended.

    Each trial not started yet also costs its start: the time from a lane's freeing (the
    end of the trial before it, or the start of the run) to its first epoch, less that
    epoch, as the trials started so far took it (a worker process, the framework's import,
    the data, the network's build): in the demo about a third of the run.
    """

    def __init__(
        self, planned: list[TrialRecord], clock: Callable[[], float] = time.monotonic
    ) -> None:
        training = [p for p in planned if p.will_train]
        self.epochs = {p.trial_id: p.spec.recipe.epochs for p in training}
        self.done = {p.trial_id: p.epochs_done for p in training}
        self.network = {p.trial_id: (p.spec.model, p.spec.attention) for p in training}
        self.times: dict[tuple[str, str], list[float]] = {}
        self.running: set[str] = set()
        self.ended: set[str] = set()
        self.failed: set[str] = set()
        self.lanes = 0  # the most trials seen running at once
        self.clock = clock
        self.created = clock()
        self.lane_freed: list[float] = []  # when trials ended, each freeing a lane
        self.waiting: dict[str, float] = {}  # trial id -> when its lane was freed
        self.start_costs: list[float] = []  # seconds from a lane's freeing to training

    def started(self, trial_id: str, epochs_done: int) -> None:
        self._running(trial_id)
        self.done[trial_id] = epochs_done
        freed = self.lane_freed.pop(0) if self.lane_freed else self.created
        self.waiting.setdefault(trial_id, freed)

    def _running(self, trial_id: str) -> None:
        self.running.add(trial_id)
        self.lanes = max(self.lanes, len(self.running))

    def epoch(self, trial_id: str, epoch: int, seconds: float) -> None:
        """Trial `trial_id` finished its epoch `epoch` (counted from 1) in `seconds`."""
        self._running(trial_id)
        self.done[trial_id] = max(self.done.get(trial_id, 0), epoch)
        freed = self.waiting.pop(trial_id, None)
        if freed is not None:
            self.start_costs.append(max(0.0, self.clock() - freed - seconds))
        recent = self.times.setdefault(self.network[trial_id], [])
        recent.append(seconds)
        del recent[:-RECENT_EPOCHS]

    def finished(self, trial_id: str, failed: bool = False) -> None:
        """The trial ended, done or `failed`: nothing of it is left to train here."""
        self.running.discard(trial_id)
        self.ended.add(trial_id)
        self.waiting.pop(trial_id, None)
        self.lane_freed.append(self.clock())
        if failed:
            self.failed.add(trial_id)

    def _epoch_seconds(self, trial_id: str) -> float | None:
        own = self.times.get(self.network[trial_id])
        if own:
            return statistics.median(own)
        every = [s for times in self.times.values() for s in times]
        return statistics.median(every) if every else None

    def seconds_left(self) -> float | None:
        """The time left, None before any epoch has been timed."""
        work = 0.0
        start_cost = statistics.median(self.start_costs) if self.start_costs else 0.0
        for trial_id, epochs in self.epochs.items():
            if trial_id in self.ended:
                continue
            seconds = self._epoch_seconds(trial_id)
            if seconds is None:
                return None
            work += max(0, epochs - self.done.get(trial_id, 0)) * seconds
            if trial_id not in self.running:
                work += start_cost
        left = len(self.epochs) - len(self.ended)
        return work / max(1, min(self.lanes, left))

    def status(self) -> str:
        """'k of n trials done, m running; about T left' (and how many failed)."""
        done = len(self.ended - self.failed)
        text = f'{done} of {len(self.epochs)} trials done, {len(self.running)} running'
        if self.failed:
            text += f', {len(self.failed)} failed'
        left = self.seconds_left()
        if left is not None:
            text += f'; about {format_duration(left)} left'
        return text


def format_duration(seconds: float) -> str:
    """Seconds as a person reads them: 45s, 12m05s, 3h25m, 2.1 days."""
    if seconds >= 48 * 3600:
        return f'{seconds / 86400:.1f} days'
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return (
        f'{hours}h{minutes:02d}m'
        if hours
        else (f'{minutes}m{seconds:02d}s' if minutes else f'{seconds}s')
    )
