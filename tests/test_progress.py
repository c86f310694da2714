"""The progress a person following a sweep reads: counts and a time left that holds."""

import re

import pytest

from bench.progress import SweepProgress, format_duration, stamped
from bench.records import PENDING, TrialRecord
from bench.trial.recipe import Recipe, TrialSpec


def trial(number, attention='none', epochs=3, done=0, status=PENDING):
    spec = TrialSpec('cifar_resnet20_v1', attention, number, Recipe(epochs=epochs))
    return TrialRecord(f'{number:012x}', spec.name, spec, status, done)


def test_the_time_left_never_counts_a_finished_epoch_and_ends_at_zero():
    a, b = trial(0), trial(1)
    follow = SweepProgress([a, b])
    assert follow.seconds_left() is None and follow.status() == '0 of 2 trials done, 0 running'
    follow.started(a.trial_id, 0)
    follow.started(b.trial_id, 0)
    # Tune reports an epoch before it updates its own record of the trial: the epoch
    # just reported is done and must not be counted again.
    follow.epoch(a.trial_id, 1, 10.0)
    assert follow.seconds_left() == pytest.approx((2 + 3) * 10.0 / 2)
    follow.epoch(b.trial_id, 1, 10.0)
    assert follow.seconds_left() == pytest.approx((2 + 2) * 10.0 / 2)
    for epoch in (2, 3):
        follow.epoch(a.trial_id, epoch, 10.0)
        follow.epoch(b.trial_id, epoch, 10.0)
    assert follow.seconds_left() == 0
    follow.finished(a.trial_id)
    follow.finished(b.trial_id)
    assert follow.seconds_left() == 0
    assert follow.status() == '2 of 2 trials done, 0 running; about 0s left'


def test_each_network_at_its_own_recent_pace_and_a_resumed_trial_from_its_epoch():
    vanilla, se, resumed = trial(0), trial(1, 'se'), trial(2, 'se', epochs=10, done=4)
    follow = SweepProgress([vanilla, se, resumed])
    follow.started(vanilla.trial_id, 0)
    follow.epoch(vanilla.trial_id, 1, 60.0)  # the first epoch builds the network
    for epoch in (2, 3):
        follow.epoch(vanilla.trial_id, epoch, 10.0)
    follow.finished(vanilla.trial_id)
    follow.started(se.trial_id, 0)
    follow.started(resumed.trial_id, 4)
    # SE has no epoch yet: it goes at the pace of all networks so far (median 10 s).
    assert follow.seconds_left() == pytest.approx((3 + 6) * 10.0 / 2)
    follow.epoch(se.trial_id, 1, 20.0)
    assert follow.seconds_left() == pytest.approx((2 + 6) * 20.0 / 2)
    assert follow.status() == '1 of 3 trials done, 2 running; about 1m20s left'


def test_a_failed_trial_leaves_nothing_to_train_and_is_counted_apart():
    a, b = trial(0), trial(1)
    follow = SweepProgress([a, b])
    follow.started(a.trial_id, 0)
    follow.epoch(a.trial_id, 1, 5.0)
    follow.finished(a.trial_id, failed=True)
    follow.started(b.trial_id, 0)
    assert follow.seconds_left() == pytest.approx(3 * 5.0)
    assert follow.status().startswith('0 of 2 trials done, 1 running, 1 failed')


def test_progress_lines_start_with_the_time_of_day():
    assert re.fullmatch(r'\d\d:\d\d:\d\d x', stamped('x'))
    assert [format_duration(s) for s in (5, 75, 3725)] == ['5s', '1m15s', '1h02m']


def test_the_time_left_does_not_jump_when_one_trial_ends_before_the_next_starts():
    """Two at a time: between one trial's end and the next one's start only one runs,
    but the work left is still shared by two lanes (found in the demo: 3m44s, then 7m28s)."""
    a, b, c = trial(0), trial(1), trial(2)
    follow = SweepProgress([a, b, c])
    follow.started(a.trial_id, 0)
    follow.started(b.trial_id, 0)
    for epoch in (1, 2, 3):
        follow.epoch(a.trial_id, epoch, 10.0)
    before = follow.seconds_left()
    follow.finished(a.trial_id)
    assert follow.seconds_left() == before == pytest.approx((3 + 3) * 10.0 / 2)
    for epoch in (1, 2, 3):
        follow.epoch(b.trial_id, epoch, 10.0)
    follow.finished(b.trial_id)
    # One trial left: it runs alone, whatever the lanes.
    assert follow.seconds_left() == pytest.approx(3 * 10.0)


def test_trials_not_started_yet_cost_their_start_as_the_started_ones_took_it():
    """Two lanes, four trials: a trial takes 4 s from its lane's freeing to training
    (worker, import, data), which the time left counts for each trial still to start."""
    now = [0.0]
    a, b, c, d = (trial(n, epochs=2) for n in range(4))
    follow = SweepProgress([a, b, c, d], clock=lambda: now[0])
    follow.started(a.trial_id, 0)
    follow.started(b.trial_id, 0)
    now[0] = 14.0  # 4 s of start, then a 10 s epoch
    follow.epoch(a.trial_id, 1, 10.0)
    follow.epoch(b.trial_id, 1, 10.0)
    # a and b: one epoch each left; c and d: two each, plus their start.
    assert follow.seconds_left() == pytest.approx((1 + 1 + 2 * (2 + 0.4)) * 10.0 / 2)
    now[0] = 24.0
    follow.epoch(a.trial_id, 2, 10.0)
    follow.finished(a.trial_id)
    now[0] = 27.0
    follow.started(c.trial_id, 0)  # c's lane was freed at 24 s
    now[0] = 38.0
    follow.epoch(c.trial_id, 1, 10.0)  # 14 s after its lane freed: a 4 s start again
    assert follow.start_costs == [4.0, 4.0, 4.0]
    follow.epoch(b.trial_id, 2, 10.0)
    follow.finished(b.trial_id)
    # c: one epoch; d: two and its start; two lanes while two trials are left.
    assert follow.seconds_left() == pytest.approx((10.0 + 24.0) / 2)
