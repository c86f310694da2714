"""The benchmark command runs and prints its table; it asserts no times."""

import json
import os
import signal
import time

import numpy as np
import pytest

from bench.benchmark.cli import main
from bench.benchmark.rows import attention_overhead_summary, format_rows, reference_summary
from bench.trial import threads


@pytest.mark.slow
def test_benchmark_prints_every_measurement(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '2')  # main() would set it for the whole session
    out = tmp_path / 'rows.json'
    assert (
        main(
            [
                '--num-gpus',
                '0',
                '--models',
                'cifar_resnet8_v1',
                '--attentions',
                'none',
                'eca',
                '--batches',
                '2',
                '--images',
                '256',
                '--batch-size',
                '32',
                '--workers',
                '1',
                '--epoch-images',
                '96',
                '--epoch-rounds',
                '1',
                '--kernels-compare',
                '--json',
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert 'trial img/s' in text and 'original img/s' in text
    assert 'whole epoch (96 training + 19 test images' in text
    assert 'speed against vanilla: cifar_resnet8_v1 eca' in text
    import json

    written = json.loads(out.read_text())
    assert written['written_by'] == 'bench.benchmark'
    assert written['command'].startswith('python -m bench.benchmark --num-gpus 0 --models')
    assert written['settings']['batch_size'] == 32 and written['settings']['torch_step'] is None
    rows = written['rows']
    assert [r['attention'] for r in rows] == ['none', 'eca']
    assert rows[0]['vs_vanilla'] == 1.0 and rows[1]['vs_vanilla'] > 0
    assert rows[1]['mxnet_ops_img_s'] > 0 and 'mxnet_ops_img_s' not in rows[0]
    assert "with MXNet's operators instead: cifar_resnet8_v1 eca" in text
    # What the extension interface alone costs, measured on the vanilla row.
    assert rows[0]['extension_floor_vs_vanilla'] > 0
    assert 'extension_floor_vs_vanilla' not in rows[1]
    assert 'no fused attention can beat it): cifar_resnet8_v1 ' in text
    assert 'fused attention kernels (' in text  # with the instruction set in use
    for row in rows:
        for key in ('data_img_s', 'trial_img_s', 'original_img_s'):
            assert row[key] > 0
        assert row['trial_over_original'] > 0  # a median of per-round ratios
        assert row['gflop_s'] > 0
        assert row['trial_epoch_s'] > 0 and row['original_epoch_s'] > 0
        assert row['epoch_speedup'] > 0  # a median of per-round ratios


def test_both_backends_side_by_side_in_one_run(capsys, tmp_path, monkeypatch):
    pytest.importorskip('torch', reason='the torch extra is not installed')
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    out = tmp_path / 'rows.json'
    assert (
        main(
            [
                '--num-gpus',
                '0',
                '--backend',
                'both',
                '--models',
                'cifar_resnet8_v1',
                '--attentions',
                'none',
                'gct',
                '--batches',
                '2',
                '--rounds',
                '2',
                '--images',
                '128',
                '--batch-size',
                '32',
                '--no-original',
                '--json',
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert 'device: gluon on cpu(0); torch on cpu' in text and 'vs gluon' in text
    assert 'note: 2 timed batch(es) in 2 round(s) check that everything runs' in text
    import json

    written = json.loads(out.read_text())
    # What the numbers were measured under, as the header printed it.
    assert written['settings']['torch_step'] == 'eager'
    assert written['settings']['precision'] == 'float32'
    assert 'float32, torch step eager' in text
    # Each framework's OpenMP threads in a process of their own, and said so.
    assert written['settings']['processes'] == 'gluon and torch each in its own'
    assert 'malloc glibc thresholds fixed, gluon and torch each in its own process' in text
    # Which kernels the torch rows used is asked of the process they ran in.
    assert 'fused torch attention kernels' in text
    rows = written['rows']
    assert [(r['backend'], r['attention']) for r in rows] == [
        ('gluon', 'none'),
        ('gluon', 'gct'),
        ('torch', 'none'),
        ('torch', 'gct'),
    ]
    for row in rows:
        assert row['trial_img_s'] > 0 and row['gflop_s'] > 0 and row['data_img_s'] > 0
        assert row['vs_vanilla'] > 0
        assert ('vs_gluon' in row) == (row['backend'] == 'torch')
        assert ('vs_reference' in row) == (row['backend'] == 'torch')
        assert ('torch_kernels' in row) == (row['backend'] == 'torch')
    with pytest.raises(SystemExit):
        main(['--backend', 'torch', '--precision', 'amp_bfloat16', '--num-gpus', '0'])
    assert 'amp_bfloat16 needs a GPU' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['--backend', 'both', '--precision', 'amp_bfloat16', '--num-gpus', '0'])
    err = capsys.readouterr().err
    assert '--precision amp_bfloat16 runs with --backend torch, not gluon' in err
    assert 'recipe' not in err


def test_the_torch_backend_alone_is_measured_in_this_process(capsys, tmp_path, monkeypatch):
    pytest.importorskip('torch', reason='the torch extra is not installed')
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    out = tmp_path / 'rows.json'
    arguments = ['--num-gpus', '0', '--backend', 'torch', '--models', 'cifar_resnet8_v1']
    arguments += ['--attentions', 'none', 'se', '--batches', '2', '--rounds', '2']
    assert main([*arguments, '--images', '64', '--batch-size', '16', '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'device: torch on cpu' in text and 'own process' not in text
    written = json.loads(out.read_text())
    assert written['settings']['processes'] == 'one'
    rows = written['rows']
    assert [(r['backend'], r['attention']) for r in rows] == [('torch', 'none'), ('torch', 'se')]
    for row in rows:
        assert row['trial_img_s'] > 0 and row['vs_reference'] > 0 and 'vs_gluon' not in row
        assert 'torch_kernels' in row


def test_the_reference_step_differentiates_its_attentions_by_autograd(monkeypatch):
    """The idiomatic PyTorch row is what a PyTorch user's module does: no hand-written
    backward (models/pytorch/channel_gate.py); the trial's own step takes it."""
    pytest.importorskip('torch', reason='the torch extra is not installed')
    from bench.benchmark.torch_steps import reference_stepper, trial_stepper
    from bench.trial.recipe import Recipe, TrialSpec
    from models.pytorch import channel_gate

    def refuse(*args):
        raise AssertionError('the hand-written backward ran')

    monkeypatch.setattr(channel_gate._ChannelGate, 'apply', refuse)
    spec = TrialSpec('cifar_resnet8_v1', 'se', seed=0, recipe=Recipe(batch_size=8))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=16).astype(np.int32)
    reference_stepper(spec, images, labels, 'cpu')()  # builds, steps twice
    with pytest.raises(AssertionError, match='hand-written backward ran'):
        trial_stepper(spec, images, labels, 'cpu')


def test_table_formatting_and_summary():
    rows = [
        {
            'model': 'm',
            'attention': 'none',
            'data_img_s': 1000.0,
            'trial_img_s': 100.0,
            'data_over_trial': 10.0,
            'gflop_s': 24.5,
        },
        {
            'model': 'm',
            'attention': 'se',
            'data_img_s': 1000.0,
            'trial_img_s': 95.0,
            'data_over_trial': 10.5,
            'original_img_s': 50.0,
            'trial_over_original': 1.9,
            'gflop_s': 23.3,
        },
    ]
    lines = format_rows(rows).splitlines()
    assert lines[2].split()[:3] == ['gluon', 'm', 'none']  # rows without one are Gluon's
    assert lines[2].split()[-7:] == ['24.5', '-', '10.0x', '-', '-', '-', '-']
    assert lines[3].split()[-7:] == ['23.3', '50.0', '10.5x', '1.90x', '-', '-', '-']
    assert reference_summary(rows) is None
    torch_row = dict(
        rows[0],
        backend='torch',
        reference_img_s=105.0,
        vs_reference=0.95,
        vs_gluon=0.9,
        reference_vs_gluon=0.94,
    )
    assert format_rows([torch_row]).splitlines()[2].split()[-3:] == ['0.90x', '105.0', '0.95x']
    assert reference_summary([torch_row]) == (
        'torch backend against idiomatic PyTorch (nn.BatchNorm2d, torch.optim.Adam, '
        'attentions differentiated by autograd): m none 0.95x\n'
        'idiomatic PyTorch against Gluon: m none 0.94x'
    )
    assert attention_overhead_summary(rows) == 'speed against vanilla: m se 95%'
    rows[1]['vs_vanilla'] = 0.91  # measured round by round, it takes precedence
    assert attention_overhead_summary(rows) == 'speed against vanilla: m se 91%'
    assert attention_overhead_summary(rows[:1]) == (
        'speed against vanilla: no attention measured beside vanilla'
    )
    assert attention_overhead_summary(rows[1:]) == (
        'speed against vanilla: vanilla not measured (add none to --attentions)'
    )
    # Both backends in one run: each attention against its own backend's vanilla.
    rows += [
        dict(rows[0], backend='torch', trial_img_s=50.0, vs_gluon=0.5),
        dict(rows[1], backend='torch', trial_img_s=45.0, vs_vanilla=0.9, vs_gluon=0.49),
    ]
    lines = format_rows(rows).splitlines()
    assert lines[4].split()[0] == 'torch' and lines[4].split()[-3] == '0.50x'
    assert (
        attention_overhead_summary(rows) == 'speed against vanilla: gluon m se 91%, torch m se 90%'
    )


def test_ratios_are_taken_round_by_round():
    from bench.benchmark.timing import median_ratio

    # The machine slows down 2x in round 2; per round, a is always 0.9 of b.
    assert median_ratio([90, 45, 90], [100, 50, 100]) == pytest.approx(0.9)


def test_use_cpus_sets_threads_before_mxnet_only(monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.delenv(threads.KEEP_DEFAULT_ENV, raising=False)
    # mxnet is already imported in the test process: nothing may change silently.
    assert threads.use_cpus(3) is None and 'OMP_NUM_THREADS' not in os.environ
    monkeypatch.setitem(threads.sys.modules, 'mxnet', None)
    monkeypatch.delitem(threads.sys.modules, 'mxnet')
    assert threads.use_cpus(3) == 3 and os.environ['OMP_NUM_THREADS'] == '3'
    assert threads.use_cpus(5) == 3  # the user's (or an earlier) choice wins
    monkeypatch.delenv('OMP_NUM_THREADS')
    monkeypatch.setenv(threads.KEEP_DEFAULT_ENV, '1')
    assert threads.use_cpus() is None and 'OMP_NUM_THREADS' not in os.environ
    assert threads.available_cpus() >= 1
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    assert threads.pin_cpus(1) == 1 and os.environ['OMP_NUM_THREADS'] == '1'
    assert threads.pin_cpus(0.5) == 1


def test_cpu_peak_estimate_reads_clock_and_vector_units(tmp_path):
    from bench.benchmark.timing import cpu_peak_gflops

    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\ncpu MHz\t\t: 2500.000\nflags\t\t: fpu avx2 fma\n')
    assert cpu_peak_gflops(str(info), cores=2) == pytest.approx(2 * 2.5 * 32)
    info.write_text('cpu MHz : 3000.0\nflags : avx512f avx2 fma\n')
    assert cpu_peak_gflops(str(info), cores=1) == pytest.approx(3.0 * 64)
    assert cpu_peak_gflops(str(tmp_path / 'missing')) is None


@pytest.mark.slow
def test_threads_compare_runs_child_processes_with_and_without_thread_setting(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    assert (
        main(
            [
                '--num-gpus',
                '0',
                '--models',
                'cifar_resnet8_v1',
                '--attentions',
                'none',
                '--batches',
                '2',
                '--images',
                '96',
                '--batch-size',
                '32',
                '--workers',
                '1',
                '--no-original',
                # The whole-epoch children: test_epochs_as_run_alternate_child_processes.
                '--epoch-images',
                '0',
                '--threads-compare',
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert 'threads: cifar_resnet8_v1 vanilla at MXNet default threads' in text
    assert 'whole epoch against the original script' not in text


def test_epochs_as_run_alternate_child_processes(monkeypatch):
    """Whole epochs as each script ran: the original at MXNet's default threads, the
    trial with ours, alternating, two children each, their medians compared."""
    import argparse

    from bench.benchmark import cli

    calls = []

    def child(arguments, threads):
        kind = arguments[arguments.index('--epoch-child') + 1]
        calls.append((kind, threads))
        return {'epoch_seconds': {'original': 3.0, 'trial': 1.5}[kind] + 0.1 * len(calls)}

    monkeypatch.setattr(cli, '_run_child', child)
    args = argparse.Namespace(
        models=['cifar_resnet8_v1'],
        batch_size=32,
        images=96,
        epoch_images=64,
        epoch_rounds=1,
        workers=1,
    )
    line = cli.epochs_as_run_summary(args, 2)
    assert calls == [('original', None), ('trial', 2)] * 2
    # Medians of the trial's (1.7, 1.9) and the original's (3.1, 3.3): 1.80 s and 3.20 s.
    assert line == (
        'whole epoch against the original script as it ran (cifar_resnet8_v1 vanilla; '
        "MXNet's default threads, 1 DataLoader workers): trial 1.80 s with "
        'OMP_NUM_THREADS=2, original 3.20 s, 1.78x faster (medians of two child processes each)'
    )


def test_epoch_child_times_one_kind_only(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    out = tmp_path / 'seconds.json'
    assert (
        main(
            [
                '--num-gpus',
                '0',
                '--models',
                'cifar_resnet8_v1',
                '--images',
                '64',
                '--batch-size',
                '32',
                '--workers',
                '0',
                '--epoch-images',
                '64',
                '--epoch-rounds',
                '2',
                '--epoch-child',
                'original',
                '--json',
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())['epoch_seconds'] > 0  # the median of two timed epochs


def test_background_work_is_settled_inside_its_own_rounds():
    from bench.benchmark.timing import interleaved_rates

    calls = []

    def plain():
        calls.append('plain')

    def loader():
        calls.append('loader')

    loader.settle = lambda: calls.append('settle')
    rates = interleaved_rates(
        {'a': plain, 'b': loader}, batch_size=1, rounds=2, batches_per_round=2, warmup=1
    )
    assert calls == [
        'plain',
        'loader',
        'settle',  # warm-up
        'plain',
        'plain',
        'settle',
        'loader',
        'loader',
        'settle',  # round 1
        'plain',
        'plain',
        'settle',
        'loader',
        'loader',
        'settle',
    ]  # round 2
    assert [len(r) for r in rates.values()] == [2, 2]


class FakeEngine:
    """MXNet's engine in miniature: one worker runs pushed work in order, while the
    caller goes on; waiting for one result waits for everything pushed before it."""

    def __init__(self):
        import queue
        import threading

        self.work = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            seconds, done = self.work.get()
            time.sleep(seconds)
            done.set()

    def push(self, seconds):
        import threading

        done = threading.Event()
        self.work.put((seconds, done))
        return done

    def waitall(self):
        self.push(0).wait()


def test_a_slow_asynchronous_backward_is_charged_to_its_own_row():
    """A stepper that returns once its loss is ready but leaves 50 ms of backward queued
    per step is charged all of it; the cheap stepper timed after it none of it. (Bounds
    that a slow machine only widens: sleeping overshoots, never undershoots.)"""
    from bench.benchmark.timing import interleaved_rates

    engine = FakeEngine()

    def slow():  # forward waited for, backward left running
        engine.push(0).wait()
        engine.push(0.05)

    def fast():
        engine.push(0).wait()

    for step in (slow, fast):
        step.settle = engine.waitall
    rates = interleaved_rates(
        {'slow': slow, 'fast': fast}, batch_size=1, rounds=3, batches_per_round=4, warmup=1
    )
    assert max(rates['slow']) <= 1 / 0.05  # all of its 50 ms a step
    # Charged slow's backlog, fast would run at slow's pace.
    assert min(rates['fast']) > 5 * max(rates['slow'])


def test_mixed_precision_benchmark_is_refused_on_the_cpu(capsys, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    with pytest.raises(SystemExit) as exit_code:
        main(['--precision', 'amp_float16', '--num-gpus', '0'])
    assert exit_code.value.code == 2
    assert 'amp_float16 needs GPUs' in capsys.readouterr().err


def test_a_ratio_of_few_timed_batches_is_said_to_be_noise():
    from bench.benchmark.cli import too_few_batches

    assert too_few_batches({'timed_batches': 40, 'rounds': 8}) is None
    assert too_few_batches({'timed_batches': 20, 'rounds': 5}) is None  # the defaults
    for timed, rounds in ((1, 1), (40, 2), (8, 8)):
        note = too_few_batches({'timed_batches': timed, 'rounds': rounds})
        assert note.startswith(f'note: {timed} timed batch(es) in {rounds} round(s)')
        assert '--batches 40 --rounds 8' in note


# Builders for StepperProcess: module-level, as a spawned child imports them by name.
_CHILD_CALLS = []  # in the child: what its steppers did


def _sleeping_steppers(seconds):
    def sleeper():
        time.sleep(seconds)

    def settling():
        _CHILD_CALLS.append('step')

    settling.settle = lambda: _CHILD_CALLS.append('settle')
    return {'sleeper': sleeper, 'settling': settling}


def _child_calls():
    return list(_CHILD_CALLS)


def _failing_build(error):
    raise error


def _exiting_steppers():
    return {'exit': lambda: os._exit(3)}


class _TwoArguments(Exception):
    """Pickles, but cannot be rebuilt from its args (as some library exceptions)."""

    def __init__(self, first, second):
        super().__init__(f'{first} and {second}')


def _raising_steppers():
    def two_arguments():
        raise _TwoArguments('one', 'two')

    def value_error():
        raise ValueError('a plain error')

    return {'two arguments': two_arguments, 'value error': value_error}


def _slow_to_load():
    time.sleep(1.5)
    return 'loaded'


class _SlowToLoad:
    """An argument whose loading in the child takes a while, as importing torch does."""

    def __reduce__(self):
        return (_slow_to_load, ())


def _steppers_of(_argument):
    return {'nothing': lambda: None}


def _unpicklable_error_steppers():
    class Local(Exception):  # a local class does not pickle
        pass

    def raises():
        raise Local('inside a step')

    return {'raises': raises}


def test_steppers_in_a_child_process_are_timed_in_turn_with_local_ones():
    """The torch rows of a `--backend both` run live in a process of their own (two
    OpenMP teams in one process slow PyTorch down); their rounds still alternate with
    the local steppers', and the child times each of its rounds itself."""
    from bench.benchmark.child import StepperProcess
    from bench.benchmark.timing import interleaved_rates

    order = []

    def local():
        order.append('local')

    with StepperProcess('the test steppers', _sleeping_steppers, 0.02) as process:
        assert process.names == ['sleeper', 'settling']
        assert process.call(os.getpid) != os.getpid()
        sleeper = process.stepper('sleeper')
        rates = interleaved_rates(
            {'local': local, 'sleeper': sleeper, 'settling': process.stepper('settling')},
            batch_size=4,
            rounds=3,
            batches_per_round=2,
            warmup=1,
        )
        assert [len(r) for r in rates.values()] == [3, 3, 3]
        assert max(rates['sleeper']) <= 4 / 0.02  # 20 ms a step, timed in the child
        assert order == ['local'] * 7  # warm-up, then two a round
        # In the child as in this process: settled after the warm-up, and before and
        # after each round's steps.
        round_calls = ['settle', 'step', 'step', 'settle']
        assert process.call(_child_calls) == ['step', 'settle'] + round_calls * 3
        assert _CHILD_CALLS == []  # none of it here
        with pytest.raises(KeyError, match="the test steppers have no stepper 'nothing'"):
            process.stepper('nothing')


def test_a_child_process_s_failures_come_back_as_errors():
    from bench.benchmark.child import StepperProcess
    from bench.errors import ProblemsFound

    # A BenchError comes back whole: its type, problems, hint and exit code.
    error = ProblemsFound(['first problem', 'second problem'], hint='do this')
    with pytest.raises(ProblemsFound) as raised:
        StepperProcess('the test steppers', _failing_build, error)
    assert raised.value.problems == ('first problem', 'second problem')
    assert raised.value.hint == 'do this' and raised.value.exit_code == error.exit_code
    assert str(raised.value) == 'first problem\nsecond problem'

    # An error that does not pickle, or pickles but cannot be rebuilt, comes back as a
    # RuntimeError naming it; every error but a BenchError with the child's traceback.
    with StepperProcess('the test steppers', _unpicklable_error_steppers) as process:
        with pytest.raises(RuntimeError, match='Local: inside a step') as raised:
            process.stepper('raises').round_seconds(1)
        assert "raise Local('inside a step')" in str(raised.value.__cause__)
        # ... and the process still answers.
        assert process.call(len, 'abc') == 3
    with StepperProcess('the test steppers', _raising_steppers) as process:
        with pytest.raises(RuntimeError, match='_TwoArguments: one and two') as raised:
            process.stepper('two arguments').warm_up(1)
        assert "raise _TwoArguments('one', 'two')" in str(raised.value.__cause__)
        with pytest.raises(ValueError, match='a plain error') as raised:
            process.stepper('value error').round_seconds(1)
        assert 'in the child process' in str(raised.value.__cause__)
        assert "raise ValueError('a plain error')" in str(raised.value.__cause__)

    # Left by an error or an interrupt, the process is stopped at once, not asked to.
    with pytest.raises(KeyboardInterrupt):
        with StepperProcess('the test steppers', _exiting_steppers) as process:
            raise KeyboardInterrupt
    assert process._process.exitcode == -signal.SIGTERM

    # A process that dies says so, with its exit code.
    with StepperProcess('the test steppers', _exiting_steppers) as process:
        with pytest.raises(RuntimeError, match=r'measuring the test steppers ended .*code 3\)'):
            process.stepper('exit').warm_up(1)


def test_an_interrupted_benchmark_says_what_it_kept(capsys, monkeypatch, tmp_path):
    from bench.benchmark import cli

    def interrupted(args, threads):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, 'run', interrupted)
    out = tmp_path / 'rows.json'
    assert main(['--num-gpus', '0', '--json', str(out)]) == 130
    assert f'interrupted: nothing measured is kept ({out} not written)' in capsys.readouterr().err
    assert not out.exists()
    # In the benchmark's own child processes (--threads-compare, whole epochs) the
    # parent says it, once, and never names the child's temporary file.
    monkeypatch.setenv(cli.CHILD_ENV, '1')
    assert main(['--num-gpus', '0', '--json', str(out)]) == 130
    assert capsys.readouterr().err == ''


@pytest.mark.skipif(not hasattr(signal, 'pthread_sigmask'), reason='POSIX signal masks')
def test_a_ctrl_c_while_the_child_loads_its_arguments_reaches_only_this_process():
    """Ctrl-C goes to the whole process group; a child still loading its arguments
    (importing the framework) must not die of it with a traceback of its own: it starts
    with Ctrl-C blocked, then ignores it, and the parent alone is interrupted."""
    import multiprocessing
    import threading

    from bench.benchmark.child import StepperProcess

    def interrupt_the_child():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = multiprocessing.active_children()
            if children:
                time.sleep(0.3)  # inside the slow loading
                os.kill(children[0].pid, signal.SIGINT)
                return
            time.sleep(0.02)

    threading.Thread(target=interrupt_the_child, daemon=True).start()
    with StepperProcess('the test steppers', _steppers_of, _SlowToLoad()) as process:
        assert process.names == ['nothing']
        assert process.call(len, 'ab') == 2  # alive and answering
