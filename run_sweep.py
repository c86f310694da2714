#!/usr/bin/env python
"""Train every cell of sweep.yaml that the results store lacks, then render the reports.

    python run_sweep.py                       # sweep.yaml: train what is missing, report
    python run_sweep.py --config sweeps/demo.yaml
    python run_sweep.py --dry-run             # the plan: done / partial / pending / failed
    python run_sweep.py --report-only         # tables and figures from the store, no training
    python run_sweep.py --only model=cifar_resnet20_v1,attention=eca
    python run_sweep.py --address auto        # join the Ray cluster on this machine
    python run_sweep.py --address 10.0.0.5:6379   # or RAY_ADDRESS: join a cluster

Overrides, KEY=VALUE anywhere on the line: a dotted key into the sweep file's structure
and a value in YAML, checked as the file is (paths relative to the sweep file's folder).
One that changes what trains makes a variant of the sweep, with its own store and reports
(README block, figures, report.html) in results/<name>-<digest>/, never over the file's
own; resources.*, outputs.*, report.*, tracking.* and data.download keep the sweep as it
is. A one-epoch smoke test of the table:

    python run_sweep.py recipe.epochs=1 'seeds=[0]' 'models=[cifar_resnet20_v1]'
    python run_sweep.py --config sweeps/demo.yaml recipe.epochs=1 name=demo-smoke

A dry run writes nothing, whatever else is on the line: with --fresh it lists what
would be deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from bench.errors import ProblemsFound
    from bench.records import TrialRecord
    from bench.sweep.config import LoadedSweep
    from bench.sweep.driver import SweepOutcome
    from bench.sweep.estimate import SweepEstimate
    from bench.tracking import Trackers
    from bench.trial.data import Dataset

INTERRUPTED = (
    'interrupted: every finished epoch is in the store; run the same command again to resume'
)
INTERRUPTED_EXIT = 130
# Flags that make no sense beside --report-only (which trains nothing and starts no Ray).
TRAINING_ONLY_FLAGS = (
    'fresh',
    'yes',
    'only',
    'retry_failed',
    'no_report',
    'address',
    'estimate',
    'quiet',
    'verbose',
)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--config', default='sweep.yaml', help='sweep file (default: sweep.yaml)')
    parser.add_argument(
        'overrides',
        nargs='*',
        metavar='KEY=VALUE',
        help="set a key of the sweep file, e.g. recipe.epochs=1 'seeds=[0,1]' "
        'resources.gpus_per_trial=0 (see above)',
    )
    parser.add_argument(
        '--dry-run',
        action='store_true',
        help='print the plan and stop; writes, deletes and downloads nothing',
    )
    parser.add_argument(
        '--only',
        default=None,
        action='append',
        metavar='KEY=VALUE,...',
        help='run a subset, e.g. model=cifar_resnet20_v1,attention=eca; a key given '
        'twice (or --only given twice) selects either value',
    )
    parser.add_argument(
        '--retry-failed',
        action='store_true',
        help='train failed trials again (from their last checkpoint)',
    )
    parser.add_argument(
        '--fresh',
        action='store_true',
        help="delete this sweep's stored results first (with --only: those "
        "cells' trials only); asks unless --yes",
    )
    parser.add_argument('--yes', action='store_true', help='do not ask before --fresh')
    parser.add_argument(
        '--address',
        default=None,
        help="Ray cluster to join: 'auto' (the one started on this machine "
        'with `ray start`) or host:port (default: RAY_ADDRESS, else a '
        'private Ray instance of this run)',
    )
    parser.add_argument('--no-report', action='store_true', help='do not render the reports')
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument(
        '--quiet',
        action='store_true',
        help="only each trial's start and end, failures and the summary (no epoch lines)",
    )
    talk.add_argument(
        '--verbose',
        action='store_true',
        help="Ray Tune's own progress output and Ray's warnings besides ours",
    )
    parser.add_argument(
        '--estimate',
        action='store_true',
        help='time a few training steps of each network still to train on this machine '
        '(about a minute; cached per machine and code revision) for the time estimate '
        'of --dry-run and of a run; without it, the estimate rests on epochs the store '
        'holds and earlier calibrations',
    )
    parser.add_argument(
        '--report-only',
        action='store_true',
        help='render the reports of the trials sweep.yaml declares now, from '
        'the store; no training, no Ray',
    )
    parser.add_argument(
        '--insert',
        action='store_true',
        help='append the results block to a README that has no markers',
    )
    return parser, parser.parse_intermixed_args(argv)


def _conflicts(args: argparse.Namespace) -> str | None:
    """Flags that contradict each other: one message, before anything is read."""
    if args.report_only:
        given = [
            f'--{name.replace("_", "-")}' for name in TRAINING_ONLY_FLAGS if getattr(args, name)
        ]
        if given:
            return (
                f'--report-only renders the reports from the store and trains nothing; '
                f'it does not take {", ".join(given)} (run without --report-only)'
            )
    if args.yes and not args.fresh:
        return (
            '--yes answers the question --fresh asks before it deletes; without --fresh '
            'nothing is asked (add --fresh to start over, or leave out --yes)'
        )
    if args.insert and args.no_report:
        return (
            '--insert adds the results block to the README that the reports write, and '
            '--no-report writes no reports; leave out one of them'
        )
    return None


def render_reports(
    loaded: LoadedSweep, insert: bool = False, manifest: dict | None = None
) -> list[Path]:
    from bench.validation import one_line
    from reports import render_all

    outputs = loaded.config.outputs
    written = render_all(
        loaded.store_dir,
        readme=loaded.resolve(outputs.readme),
        figures_dir=loaded.resolve(outputs.figures),
        report_path=loaded.resolve(outputs.report),
        options=loaded.config.report.model_dump(),
        layout={'models': loaded.config.models, 'attentions': loaded.config.attentions},
        insert=insert,
        manifest=manifest,
        protected=[loaded.path],
    )
    for path in written:
        print(f'wrote {one_line(path)}')
    return [Path(p) for p in written]


def main(argv: list[str] | None = None) -> int:
    """The command: its exit code. Every failure a user can act on is a BenchError,
    reported here and nowhere else."""
    from bench.errors import BenchError, report

    _, args = parse_args(argv)
    try:
        return run(args)
    except BenchError as error:
        return report(error)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return INTERRUPTED_EXIT


def run(args: argparse.Namespace) -> int:
    """What the command line asks for; BenchError for what stops it."""
    from bench.errors import BenchError
    from bench.store import ResultsStore
    from bench.sweep.config import load_config, parse_only

    conflict = _conflicts(args)
    if conflict:
        raise BenchError(conflict)
    loaded = load_config(args.config, args.overrides)
    only = parse_only(','.join(args.only)) if args.only is not None else None
    store = ResultsStore(loaded.store_dir)
    try:
        store.check_is_store()
        if args.dry_run:
            return _dry_run(loaded, args, only)
        if args.report_only:
            return _report_only(loaded, args.insert)
        new_store = not os.path.lexists(store.root)
        try:
            store.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BenchError(
                f'cannot create the results folder {store.root}: '
                f'{error.strerror or error}; set outputs.results in '
                f'{loaded.path} to a folder you can write'
            ) from error
        try:
            with store.lock():
                store.clean_scratch()
                status = _plan_and_train(loaded, args, only)
                # Again at the end: a killed run's trial workers are not in its process
                # group and may outlive it for a moment, writing into the scratch after
                # the cleaning above; this run's own trials have removed theirs by now.
                store.clean_scratch()
                return status
        finally:
            if new_store:
                # A run stopped before it wrote anything leaves no empty store behind.
                with contextlib.suppress(OSError):
                    store.root.rmdir()
    except OSError as error:
        raise BenchError(io_failure(error, loaded)) from error


def io_failure(error: OSError, loaded: LoadedSweep) -> str:
    """One line for a failed read or write of the store or an output: which path, why, and
    what to do; what was finished stays in the store."""
    path = error.filename or loaded.store_dir
    cause = error.strerror or str(error)
    name = errno.errorcode.get(error.errno, '')
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = (
            'free space on that disk, or point outputs.results in the sweep file '
            'elsewhere, and run the same command again'
        )
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = (
            'the results folder and the outputs must be writable by you (not read-only '
            'or immutable); fix that, or point outputs in the sweep file elsewhere, and '
            'run the same command again'
        )
    else:
        fix = 'fix the cause and run the same command again'
    return (
        f'{path}: {cause}{f" ({name})" if name else ""}; {fix}. Nothing finished was '
        'lost: every finished epoch in the store stays there'
    )


def _dry_run(loaded: LoadedSweep, args: argparse.Namespace, only: dict | None) -> int:
    """The plan, and what --fresh would delete; writes, deletes and downloads nothing."""
    from bench.store import ResultsStore
    from bench.sweep.cluster import local_devices
    from bench.sweep.estimate import format_estimate
    from bench.sweep.plan import format_plan, plan, planned_data_identity
    from bench.tracking import describe_tracking

    identity, note = planned_data_identity(loaded)
    _print_header(
        loaded, identity['name'] if identity['official'] else f'{identity["name"]} (not CIFAR-10)'
    )
    if note:
        print(f'data: {note}')
    planned = plan(loaded, identity, only=only, retry_failed=args.retry_failed)
    resources = loaded.config.resources
    if resources.gpus_per_trial and not (args.address or os.environ.get('RAY_ADDRESS')):
        from bench.gpu import physical_gpus

        if not physical_gpus():
            # What a run here asks Ray for (the driver's cpu_fallback): CPUs alone.
            resources = resources.model_copy(update={'gpus_per_trial': 0})
    print(format_plan(planned, resources, devices=local_devices(loaded.config.resources)))
    if args.fresh:
        from bench.validation import one_line

        targets = ResultsStore(loaded.store_dir).fresh_targets(
            [p.trial_id for p in planned] if only else None
        )
        print(
            f'--fresh would delete {len(targets)} path(s)'
            + (':' if targets else '')
            + ''.join(f'\n  {one_line(path)}' for path in targets)
        )
    problems = _problems_before_training(loaded, args, only, planned, identity)
    if not problems:
        # With --fresh the run trains every planned trial again from its first epoch.
        to_train = [started_over(p) for p in planned] if args.fresh else planned
        print(format_estimate(_estimate(loaded, args, to_train, identity)))
    for line in describe_tracking(loaded):
        print(line)
    print(
        'dry run: nothing was written, deleted or downloaded'
        + (' (but the calibration cache, outside the store)' if args.estimate else '')
    )
    if problems:
        raise problems
    return 0


def started_over(record: TrialRecord) -> TrialRecord:
    """The trial as --fresh leaves it: nothing stored, all to train."""
    import dataclasses

    from bench.store import PENDING

    return dataclasses.replace(
        record, status=PENDING, epochs_done=0, error=None, problems=(), final=None
    )


def _print_header(loaded: LoadedSweep, data_label: str) -> None:
    from bench.trial.recipe import describe_recipe

    config = loaded.config
    if loaded.variant_of is not None:
        print(
            f'{loaded.described}: the variant {config.name} of the sweep {loaded.variant_of}, '
            f'with its own store and reports in {loaded.store_dir}'
        )
    elif loaded.overrides:
        print(loaded.described)
    print(f'sweep {config.name}: data {data_label}, store {loaded.store_dir}')
    changed = sum(1 for o in config.overrides if o.recipe)
    print(
        f'recipe: {describe_recipe(config.recipe)}'
        + (f' ({changed} override(s) change it for some cells)' if changed else '')
    )


def _fresh(loaded: LoadedSweep, planned: list[TrialRecord], only: dict | None, yes: bool) -> bool:
    """Delete what --fresh deletes, asking first unless `yes`: False when the user said no."""
    from bench.errors import BenchError
    from bench.store import ResultsStore

    store = ResultsStore(loaded.store_dir)
    targets = store.fresh_targets([p.trial_id for p in planned] if only else None)
    if not targets:
        return True
    what = (
        f'{len(targets)} stored trial(s) of the cells --only selects'
        if only
        else f'every stored result ({len(targets)} path(s))'
    )
    if not yes:
        try:
            answer = input(f'delete {what} in {loaded.store_dir}? [y/N] ')
        except EOFError:
            print(file=sys.stderr)  # end the prompt's line
            raise BenchError(
                '--fresh deletes stored results and asks first; with no one '
                'to answer (no terminal), add --yes'
            ) from None
        if answer.strip().lower() not in ('y', 'yes'):
            print('nothing deleted')
            return False
    store.delete(targets)
    print(f'deleted {what}')
    return True


def _plan_and_train(loaded: LoadedSweep, args: argparse.Namespace, only: dict | None) -> int:
    """Load the data, plan, check, delete what --fresh asks for, train, then report."""
    from bench import tracking
    from bench.errors import FAILED
    from bench.sweep.estimate import format_estimate
    from bench.sweep.plan import load_sweep_data, plan

    data = load_sweep_data(loaded)
    identity = data.identity.to_dict()
    _print_header(loaded, data.identity.label)
    planned = plan(loaded, identity, only=only, retry_failed=args.retry_failed)
    problems = _problems_before_training(loaded, args, only, planned, identity)
    if problems:
        raise problems
    if args.fresh:
        if not _fresh(loaded, planned, only, args.yes):
            return FAILED
        planned = plan(loaded, identity, only=only, retry_failed=args.retry_failed)
    estimate = _estimate(loaded, args, planned, identity)
    print(format_estimate(estimate))
    trackers = _open_trackers(loaded, args)
    try:
        started = time.monotonic()
        outcome = _train(loaded, args, data, planned, trackers)
        # The plan again, from the store: statuses and epochs as the run left them.
        from bench.sweep.plan import format_plan

        print(format_plan(plan(loaded, identity, only=only), loaded.config.resources))
        print(took_against_estimate(time.monotonic() - started, estimate))
        if outcome.interrupted:
            trackers.sweep_ended(tracking.KILLED)
            print(INTERRUPTED, file=sys.stderr)
            stale = [] if args.no_report else stale_outputs_hint(loaded, args)
            for line in stale:
                print(line, file=sys.stderr)
            return INTERRUPTED_EXIT
        code = _summary(outcome)
        written = [] if args.no_report else render_reports(loaded, insert=args.insert)
        readme = loaded.resolve(loaded.config.outputs.readme)
        trackers.sweep_ended(
            tracking.FAILED if outcome.failed or outcome.damaged else tracking.FINISHED,
            [p for p in written if p != readme] + [loaded.store_dir / 'results.csv'],
        )
        return code
    except BaseException:
        trackers.sweep_ended(tracking.KILLED)
        raise
    finally:
        trackers.close()


def stale_outputs_hint(loaded: LoadedSweep, args: argparse.Namespace) -> list[str]:
    """After an interrupted run, the outputs rendered from this store before, which still
    show it as it was then, and the command that renders them from what it holds now."""
    import shlex

    from bench.validation import one_line, without_secrets
    from reports.outputs import shows_store

    outputs = loaded.config.outputs
    named = [
        (kind, what.format(path=_shown_path(loaded.resolve(path))))
        for kind, what, path in (
            ('readme', 'the table in {path}', outputs.readme),
            ('report', '{path}', outputs.report),
            ('figures', 'the figures in {path}', outputs.figures),
        )
        if path is not None and shows_store(loaded.resolve(path), loaded.store_dir, kind)
    ]
    if not named:
        return []
    command = shlex.join(
        ['python', 'run_sweep.py', '--config', args.config, *args.overrides, '--report-only']
    )
    what = [text for _, text in named]
    shown = ', '.join(what[:-1]) + (' and ' if len(what) > 1 else '') + what[-1]
    many = len(named) > 1 or named[0][0] == 'figures'
    show, were, them = ('show', 'they were', 'them') if many else ('shows', 'it was', 'it')
    return [
        f'{shown} still {show} the store as it was when {were} last rendered; '
        f'`{one_line(without_secrets(command))}` renders {them} from what it holds now'
    ]


def _shown_path(path: Path) -> str:
    """`path` as one line of text, from the working folder where it lies below it."""
    from bench.validation import one_line

    relative = os.path.relpath(path)
    return one_line(path.as_posix() if relative.startswith('..') else Path(relative).as_posix())


def _open_trackers(loaded: LoadedSweep, args: argparse.Namespace) -> Trackers:
    """The live views the sweep file turns on, said where to watch."""
    from bench.progress import stamped
    from bench.tracking import describe_tracking, open_trackers

    for line in describe_tracking(loaded):
        print(line)
    return open_trackers(
        loaded, warn=lambda text: print(stamped(text), flush=True), verbose=args.verbose
    )


def _estimate(
    loaded: LoadedSweep, args: argparse.Namespace, planned: list[TrialRecord], identity: dict
) -> SweepEstimate:
    """The time estimate of the trials still to train: from the store's epochs and this
    machine's cached calibrations, and with --estimate a calibration of the rest."""
    from bench.sweep.estimate import (
        cached_calibration,
        calibrate,
        cluster_slots,
        estimate_sweep,
        local_trial_device,
        neighbour_stores,
        network_key,
        stored_epoch_times,
        unmeasured,
    )
    from bench.sweep.plan import plan

    resources = loaded.config.resources
    device = local_trial_device(resources)
    address = args.address or os.environ.get('RAY_ADDRESS')
    # On a cluster, as many trials at once as its nodes hold; each at this machine's
    # pace (the nodes' devices are not known before their trials start).
    slots = cluster_slots(address, resources) if address else None
    specs = [p.spec for p in planned if p.will_train]
    # Under --only, the networks of the whole sweep may stand for those it selects.
    whole_sweep = plan(loaded, identity) if args.only else []
    stored = stored_epoch_times(
        neighbour_stores(loaded.resolve(loaded.config.outputs.results), loaded.store_dir)
    )
    # Only networks the stores hold no epochs of on this device are worth timing.
    to_time = unmeasured(specs, stored, device, int(identity.get('train_images') or 0))
    calibration = (
        calibrate(to_time, resources, device)
        if args.estimate and to_time
        else cached_calibration(device, {network_key(p.spec) for p in [*planned, *whole_sweep]})
    )
    return estimate_sweep(
        planned,
        stored,
        resources,
        identity,
        calibration,
        device,
        slots,
        also_known=whole_sweep,
    )


def took_against_estimate(seconds: float, estimate: SweepEstimate) -> str:
    """A run's closing line: how long it took, beside what was estimated."""
    from bench.sweep.estimate import duration

    if not estimate.known:
        return f'took {duration(seconds)} (no estimate)'
    return (
        f'took {duration(seconds)}; the estimate was {duration(estimate.wall())} '
        f'({duration(estimate.wall("low"))}-{duration(estimate.wall("high"))}) for the '
        f'training of {len(estimate.known)} of {len(estimate.trials)} trial(s), without '
        'the start of Ray and of each trial'
    )


def _train(
    loaded: LoadedSweep,
    args: argparse.Namespace,
    data: Dataset,
    planned: list[TrialRecord],
    trackers: Trackers | None = None,
) -> SweepOutcome:
    from bench.sweep.driver import run_sweep

    return run_sweep(
        loaded,
        data,
        planned,
        address=args.address,
        quiet=args.quiet,
        verbose=args.verbose,
        trackers=trackers,
        on_ray_lost=lambda message, end_started: _ray_lost(loaded, message, end_started),
    )


def _ray_lost(loaded: LoadedSweep, message: str, end_started: Callable[[], None]) -> None:
    """Ray's head died mid-run (called from the watchdog's thread): Ray's driver cannot go
    on, and exits from C++ after a minute without any cleanup. End here instead: one
    message, every Ray process this run started ended, the lock released."""
    from bench.store import ResultsStore

    print(
        f'error: {message}, so the sweep stopped. Every finished epoch is in the store; '
        'run the same command again to resume (trials in progress continue from their '
        'last checkpoint)',
        file=sys.stderr,
        flush=True,
    )
    end_started()
    ResultsStore(loaded.store_dir).release_lock()
    sys.stdout.flush()
    os._exit(1)


def _summary(outcome: SweepOutcome) -> int:
    """The failed and damaged trials of a run, on stderr; the exit code they make."""
    from bench.validation import last_line, one_line

    code = 0
    names = {p.trial_id: p.name for p in outcome.planned}
    if outcome.failed:
        print(f'{len(outcome.failed)} trial(s) failed:', file=sys.stderr)
        for tid, error in outcome.failed.items():
            print(f'  {names[tid]} ({tid}): {last_line(error)}', file=sys.stderr)
        print('fix the cause, then run again with --retry-failed', file=sys.stderr)
        code = 1
    if outcome.damaged:
        print(
            f'{len(outcome.damaged)} trial(s) not trained because their stored files are damaged:',
            file=sys.stderr,
        )
        for tid, problems in outcome.damaged.items():
            for problem in problems:
                print(f'  {names[tid]} ({tid}): {one_line(problem)}', file=sys.stderr)
        code = 1
    return code


def _problems_before_training(
    loaded: LoadedSweep,
    args: argparse.Namespace,
    only: dict | None,
    planned: list[TrialRecord],
    identity: dict,
) -> ProblemsFound | None:
    """What would stop the sweep part way, found before anything trains: one error listing
    them all (with the doctor's hint where the backends are the cause), or None."""
    from bench.errors import DOCTOR_HINT, ProblemsFound
    from bench.sweep.plan import (
        backend_problems,
        data_problems,
        precision_problems,
        trained_in_the_files_store,
    )
    from bench.tracking import tracking_problems

    problems = data_problems(planned, identity) + trained_in_the_files_store(loaded, planned)
    backend = backend_problems(planned, loaded.config.resources)
    if not (args.address or os.environ.get('RAY_ADDRESS')):
        from bench.gpu import physical_gpus

        backend += precision_problems(planned, len(physical_gpus()))
    problems += backend
    problems += tracking_problems(loaded)
    if only and not planned:
        config = loaded.config
        problems.append(
            f'--only {",".join(args.only)} matches no trial of the sweep (models: '
            f'{", ".join(config.models)}; attentions: '
            f'{", ".join(config.attentions)}; seeds: '
            f'{", ".join(map(str, config.seeds))})'
        )
    if not args.no_report:
        problems += _output_problems(loaded, args.insert)
    if not problems:
        return None
    return ProblemsFound(problems, hint=DOCTOR_HINT if backend else None)


def _output_problems(loaded: LoadedSweep, insert: bool) -> list[str]:
    from reports.outputs import output_problems

    outputs = loaded.config.outputs
    if insert and outputs.readme is None:
        return [
            '--insert appends the results block to the README that outputs.readme names, '
            'and this sweep names none (outputs.readme: null); set outputs.readme, or '
            'leave out --insert'
        ]
    return output_problems(
        readme=loaded.resolve(outputs.readme),
        report=loaded.resolve(outputs.report),
        figures_dir=loaded.resolve(outputs.figures),
        protected=[loaded.path],
        insert=insert,
        models=loaded.config.models,
        store_dir=loaded.store_dir,
    )


def _report_only(loaded: LoadedSweep, insert: bool) -> int:
    """Reports of the sweep as sweep.yaml declares it now, from stored results alone."""
    from bench.errors import ProblemsFound
    from bench.store import ResultsStore
    from bench.sweep.plan import record_sweep, report_data_identity, sweep_manifest
    from bench.trial.data import DataError, official_identity

    if loaded.variant_of is not None and not os.path.lexists(loaded.store_dir):
        from bench.errors import BenchError
        from bench.sweep.config import RUN_OPTIONS

        # An override meant as a run option would otherwise make an empty store.
        keeping = ', '.join(key if '.' in key else f'{key}.*' for key in RUN_OPTIONS)
        raise BenchError(
            f'{loaded.described}: the variant {loaded.config.name} of the sweep '
            f'{loaded.variant_of} has no store yet ({loaded.store_dir} does not exist), so '
            'there is nothing to report; run it without --report-only to train it, or leave '
            f'out the overrides that change what trains (all but {keeping})'
        )
    problems = _output_problems(loaded, insert)
    if problems:
        raise ProblemsFound(problems)
    try:
        identity = report_data_identity(loaded)
    except DataError as error:
        if not loaded.config.report.reference:
            raise
        # Nothing has trained here, so the published table is all there is to show:
        # rendered from the shipped data beside the official CIFAR-10's cells (none
        # trained), with nothing recorded in the store.
        print(
            f'data not found ({str(error).splitlines()[0]}); showing the published '
            f'{loaded.config.report.reference} table beside cells not trained yet'
        )
        render_reports(
            loaded,
            insert=insert,
            manifest=sweep_manifest(
                loaded.config, official_identity().to_dict(), loaded.changes, loaded.path.name
            ),
        )
        return 0
    manifest = record_sweep(loaded, identity)
    # results.csv says which stored trials the sweep asks for: as it does now.
    ResultsStore(loaded.store_dir).write_results_csv(manifest)
    render_reports(loaded, insert=insert)
    return 0


if __name__ == '__main__':
    sys.exit(main())
