"""scripts/gpu_torch_benchmark.py: its arithmetic, and one small run on the CPU so that the
script a GPU user runs is known to work."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'scripts' / 'gpu_torch_benchmark.py'


def load_script():
    spec = importlib.util.spec_from_file_location('gpu_torch_benchmark', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_projection_adds_every_trial_and_divides_by_the_sharing_gain():
    script = load_script()
    rates = {
        (m, a, 'float32', False): rate
        for m, rate in (('cifar_resnet20_v1', 10_000.0), ('cifar_resnet56_v1', 4_000.0))
        for a in ('none', 'se', 'eca', 'gct')
    }
    images = script.trial_images()
    assert images == 186 * 390 * 128 + 186 * 10_000 / 3
    hours, gain = script.projected_table_hours(rates, {1: 1000.0, 2: 1500.0, 4: 1400.0})
    assert gain == 1.5
    assert hours == pytest.approx(8 * images * (1 / 10_000 + 1 / 4_000) / 1.5 / 3600)
    assert script.projected_table_hours({}, {1: 1.0}) is None


def test_the_script_refuses_bad_arguments_before_any_device_time(tmp_path, capsys):
    """A card is lent for minutes: a typo is refused at once, all problems together, and
    --out never overwrites a file that is not this script's JSON."""
    script = load_script()
    mine = tmp_path / 'sweep.yaml'
    mine.write_text('name: mine\n')
    code = script.main(
        ['--device', 'gpu', '--models', 'resnet50', '--attentions', 'coord', 'se']
        + ['--precisions', 'fp8', '--out', str(mine)]
    )
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 5, err
    assert err[0] == 'error: --device gpu: give cuda, cuda:N or cpu'
    assert err[1].startswith("error: unknown model 'resnet50'")
    assert err[2].startswith("error: unknown attention 'coord'")
    assert err[3] == 'error: --precisions fp8: give any of float32, amp_float16, amp_bfloat16'
    assert err[4].startswith(
        f'error: --out {mine} exists and scripts/gpu_torch_benchmark.py did not write it'
    )
    assert mine.read_text() == 'name: mine\n'
    assert script.main(['--device', 'cpu', '--batch-size', str(2**21)]) == 2
    assert f'--batch-size {2**21}: at most {2**20}' in capsys.readouterr().err
    # Nothing to measure is an error, not an empty table with exit code 0.
    assert script.main(['--device', 'cpu', '--precisions', 'amp_bfloat16']) == 2
    assert (
        'error: --precisions amp_bfloat16 with --device cpu: mixed precision runs on a GPU '
        'only, so nothing would be measured; add float32'
    ) in capsys.readouterr().err
    for args, expected in (
        (['--steps', '0'], 'argument --steps: expected 1 to'),
        (['--sharing', '1', '0'], 'argument --sharing: expected 1 to 64, got 0'),
        (['--sharing-seconds', '0'], 'expected more than 0 to 600 seconds, got 0'),
        (['--sharing-seconds', '1e308'], 'expected more than 0 to 600 seconds, got 1e308'),
        (['--budget-s', 'nan'], 'expected 0 to 86400 seconds, got nan'),
        (['--batch-size', '-1'], 'argument --batch-size: expected at least 1, got -1'),
    ):
        with pytest.raises(SystemExit) as exit_info:
            script.main(['--device', 'cpu', *args])
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err, args


def test_without_pydantic_the_script_says_which_wheel_to_carry():
    """The lent GPU machine has PyTorch and numpy only: a missing package is one line."""
    prelude = (
        "import runpy, sys; sys.modules['pydantic'] = None; "
        f"sys.argv = ['gpu_torch_benchmark.py', '--device', 'cpu']; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, '-c', prelude], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 2 and 'Traceback' not in done.stderr, done.stderr
    assert 'pip install pydantic) or carry its wheel' in done.stderr


@pytest.mark.slow
def test_the_script_runs_on_the_cpu_and_writes_its_numbers(tmp_path):
    pytest.importorskip('torch', reason='the torch extra is not installed')
    out = tmp_path / 'gpu.json'
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            '--device',
            'cpu',
            '--models',
            'cifar_resnet8_v1',
            '--attentions',
            'none',
            'eca',
            '--steps',
            '2',
            '--batch-size',
            '16',
            '--sharing',
            '1',
            '2',
            '--sharing-seconds',
            '1',
            '--no-compile',
            '--out',
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['written_by'] == 'scripts/gpu_torch_benchmark.py'
    assert [(r['attention'], r['precision']) for r in result['rows']] == [
        ('none', 'float32'),
        ('eca', 'float32'),
    ]  # bfloat16 only on a GPU
    assert all(r['img_s'] > 0 for r in result['rows'])
    import torch

    from models.kernels.torch_ops import torch_kernel_status

    # What ran, beside each number: on a GPU, whether compiling held and kept its graphs.
    ran = {r['attention']: r['ran'] for r in result['rows']}
    assert ran['none'] == f'torch {torch.__version__}'
    fused = ' + fused attention CPU kernels' if torch_kernel_status().loaded else ''
    assert ran['eca'] == f'torch {torch.__version__}{fused}'
    assert set(result['sharing_img_s']) == {'1', '2'}
    assert '2 trial(s) sharing the CPU' in done.stdout and 'the card' not in done.stdout
    assert done.stdout.startswith(f'cpu, PyTorch {torch.__version__}, batch 16')
    assert 'left out on the cpu: amp_bfloat16 (mixed precision runs on GPUs only)' in done.stdout


def test_the_users_gpu_selfcheck_writes_a_valid_half_gpu_demo_sweep(tmp_path):
    """scripts/gpu_selfcheck.sh derives its 0.5-GPU sweep from sweeps/demo.yaml with sed;
    the result must stay a valid sweep of one epoch and two trials per card."""
    script = (ROOT / 'scripts' / 'gpu_selfcheck.sh').read_text().replace('\\\n', ' ')
    line = next(line for line in script.splitlines() if line.startswith('sed -e'))
    expressions = [
        part.split("'")[1] if "'" in part else part.split('"')[1] for part in line.split(' -e ')[1:]
    ]
    expressions = [e.replace('$OUT', 'out') for e in expressions]
    done = subprocess.run(
        ['sed', *sum((['-e', e] for e in expressions), []), str(ROOT / 'sweeps' / 'demo.yaml')],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    import yaml

    from bench.sweep.config import parse_config

    config = parse_config(yaml.safe_load(done.stdout))
    assert config.name == 'gpu-selfcheck' and config.resources.gpus_per_trial == 0.5
    assert config.recipe.epochs == 1 and config.seeds == [0]
    assert config.outputs.results == '../out/results'
    selfcheck = ROOT / 'scripts' / 'gpu_selfcheck.sh'
    assert subprocess.run(['bash', '-n', str(selfcheck)]).returncode == 0
