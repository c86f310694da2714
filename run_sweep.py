#!/usr/bin/env python
"""Train every cell of sweep.yaml that the results store lacks, then render the reports.

    python run_sweep.py                       # sweep.yaml: train what is missing, report
    python run_sweep.py --config sweeps/demo.yaml
    python run_sweep.py --dry-run             # the plan: done / partial / pending / failed
    python run_sweep.py --report-only         # tables and figures from the store, no training
    python run_sweep.py --only model=cifar_resnet20_v1,attention=eca
    python run_sweep.py --address ray://head:10001   # or RAY_ADDRESS: join a cluster
"""
import argparse
import sys


DOCTOR_HINT = ('python -m bench.doctor checks this machine in under a minute (frameworks, '
               'driver, each GPU and which backend can use it) and says what to fix')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='sweep.yaml', help='sweep file (default: sweep.yaml)')
    parser.add_argument('--dry-run', action='store_true', help='print the plan and stop')
    parser.add_argument('--only', default=None, metavar='KEY=VALUE,...',
                        help='run a subset, e.g. model=cifar_resnet20_v1,attention=eca')
    parser.add_argument('--retry-failed', action='store_true',
                        help='train failed trials again (from their last checkpoint)')
    parser.add_argument('--fresh', action='store_true',
                        help="delete this sweep's stored results first (asks unless --yes)")
    parser.add_argument('--yes', action='store_true', help='do not ask before --fresh')
    parser.add_argument('--address', default=None,
                        help='Ray cluster to join (default: RAY_ADDRESS, else start locally)')
    parser.add_argument('--no-report', action='store_true', help='do not render the reports')
    parser.add_argument('--report-only', action='store_true',
                        help='render the reports of the trials sweep.yaml declares now, from '
                             'the store; no training, no Ray')
    parser.add_argument('--insert', action='store_true',
                        help='append the results block to a README that has no markers')
    return parser, parser.parse_args(argv)


def render_reports(loaded, insert=False, manifest=None):
    from reports import render_all
    outputs = loaded.config.outputs
    written = render_all(loaded.store_dir,
                         readme=loaded.resolve(outputs.readme),
                         figures_dir=loaded.resolve(outputs.figures),
                         report_path=loaded.resolve(outputs.report),
                         options=loaded.config.report.model_dump(),
                         layout={'models': loaded.config.models,
                                 'attentions': loaded.config.attentions},
                         insert=insert, manifest=manifest)
    for path in written:
        print(f'wrote {path}')


def main(argv=None):
    parser, args = parse_args(argv)
    from bench.sweep.config import ConfigError, load_config, parse_only
    try:
        loaded = load_config(args.config)
        only = parse_only(args.only) if args.only else None
    except ConfigError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2

    if args.report_only:
        return _report_only(loaded, args.insert)

    from bench.store import ResultsStore, StoreLocked
    if args.dry_run and not args.fresh:
        return _plan_and_train(loaded, args, only)
    store = ResultsStore(loaded.store_dir)
    try:
        store.root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f'error: cannot create the results folder {store.root}: '
              f'{error.strerror or error}; set outputs.results in {loaded.path} to a folder '
              'you can write', file=sys.stderr)
        return 2
    try:
        with store.lock():
            store.clean_scratch()
            return _plan_and_train(loaded, args, only)
    except StoreLocked as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130


INTERRUPTED = ('interrupted: every finished epoch is in the store; run the same command '
               'again to resume')


def _plan_and_train(loaded, args, only):
    if args.fresh:
        if not args.yes:
            try:
                answer = input(f'delete every stored result in {loaded.store_dir}? [y/N] ')
            except EOFError:
                print('\nerror: --fresh deletes every stored result and asks first; with no '
                      'one to answer (no terminal), add --yes', file=sys.stderr)
                return 2
            if answer.strip().lower() not in ('y', 'yes'):
                print('nothing deleted')
                return 1
        from bench.sweep.plan import remove_store
        remove_store(loaded)

    from bench.trial.data import DataError
    from bench.gpu import GPUError
    from bench.sweep.cluster import local_devices
    from bench.sweep.driver import run_sweep
    from bench.sweep.plan import format_plan, load_sweep_data, plan, SweepError
    try:
        data = load_sweep_data(loaded)
    except DataError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(f'sweep {loaded.config.name}: data {data.identity.label}, '
          f'store {loaded.store_dir}')
    planned = plan(loaded, data.identity.to_dict(), only=only,
                   retry_failed=args.retry_failed)
    problems = _problems_before_training(loaded, args, only, planned, data)
    if problems:
        for problem in problems:
            print(f'error: {problem}', file=sys.stderr)
        if any('backend' in problem for problem in problems):
            print(DOCTOR_HINT, file=sys.stderr)
        return 2
    if args.dry_run:
        print(format_plan(planned, loaded.config.resources,
                          devices=local_devices(loaded.config.resources)))
        return 0
    try:
        outcome = run_sweep(loaded, data, planned, address=args.address)
    except (SweepError, GPUError) as error:
        print(f'error: {error}', file=sys.stderr)
        if isinstance(error, GPUError):
            print(DOCTOR_HINT, file=sys.stderr)
        return 2
    # The plan again, from the store: statuses and epochs as the run left them.
    print(format_plan(plan(loaded, data.identity.to_dict(), only=only), loaded.config.resources))
    if outcome.interrupted:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    code = 0
    if outcome.failed:
        print(f'{len(outcome.failed)} trial(s) failed:', file=sys.stderr)
        names = {p.trial_id: p.name for p in outcome.planned}
        for tid, error in outcome.failed.items():
            print(f'  {names[tid]} ({tid}): {error.strip().splitlines()[-1]}', file=sys.stderr)
        print('fix the cause, then run again with --retry-failed', file=sys.stderr)
        code = 1
    if outcome.damaged:
        names = {p.trial_id: p.name for p in outcome.planned}
        print(f'{len(outcome.damaged)} trial(s) not trained because their stored files are '
              'damaged:', file=sys.stderr)
        for tid, problems in outcome.damaged.items():
            for problem in problems:
                print(f'  {names[tid]} ({tid}): {problem}', file=sys.stderr)
        code = 1
    if not args.no_report:
        code = max(code, _report_or_fail(loaded, args.insert))
    return code


def _problems_before_training(loaded, args, only, planned, data):
    """What would stop the sweep part way, found before anything trains."""
    from bench.sweep.plan import backend_problems, data_problems
    from reports import ReportError, check_readme
    problems = data_problems(planned, data.identity.to_dict())
    problems += backend_problems(planned, loaded.config.resources)
    if only and not planned:
        config = loaded.config
        problems.append(f"--only {args.only} matches no trial of the sweep (models: "
                        f"{', '.join(config.models)}; attentions: "
                        f"{', '.join(config.attentions)}; seeds: "
                        f"{', '.join(map(str, config.seeds))})")
    readme = loaded.resolve(loaded.config.outputs.readme)
    if readme is not None and not args.no_report:
        try:
            check_readme(readme, args.insert)
        except (ReportError, OSError) as error:
            problems.append(str(error))
    return problems


def _report_only(loaded, insert):
    """Reports of the sweep as sweep.yaml declares it now, from stored results alone."""
    from bench.sweep.plan import record_sweep, report_data_identity, sweep_manifest
    from bench.trial.data import DataError
    try:
        identity = report_data_identity(loaded)
    except DataError as error:
        if not loaded.config.report.reference:
            print(f'error: {error}', file=sys.stderr)
            return 2
        # Nothing has trained here, so the published table is all there is to show:
        # rendered from the shipped data, with no trial taken for current and nothing
        # recorded in the store.
        print(f"data not found ({str(error).splitlines()[0]}); showing the published "
              f"{loaded.config.report.reference} table beside cells not trained yet")
        unknown = {'name': 'CIFAR-10 (not found here)', 'official': True, 'digest': None}
        return _report_or_fail(loaded, insert, sweep_manifest(loaded.config, unknown))
    record_sweep(loaded, identity)
    return _report_or_fail(loaded, insert)


def _report_or_fail(loaded, insert, manifest=None):
    from reports import ReportError
    try:
        render_reports(loaded, insert=insert, manifest=manifest)
    except ReportError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
