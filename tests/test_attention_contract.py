"""The contract kit (models.check_attention) over every registered attention, built-in
and the fixture package's, and the registry's handling of brought attentions."""

import subprocess
import sys

import pytest

from models import registry
from models.check_attention import contract, main
from models.names import UnknownNameError

BUILTIN = [spec.name for spec in registry.BUILTIN_SPECS if spec.name != 'none']


def _failures(name):
    results = list(contract(name, channels=(16,)))
    assert results, name
    return [r.line() for r in results if r.passed is False], results


@pytest.mark.parametrize('name', BUILTIN)
def test_every_builtin_attention_keeps_the_contract(name):
    failures, results = _failures(name)
    assert not failures, failures
    checks = {r.check.split(' C=')[0] for r in results if r.passed}
    assert {'gluon shape', 'torch shape', 'gluon parameters', 'torch parameters'} <= checks
    assert {'gluon gradients', 'torch gradients', 'gluon MACs', 'gluon = torch'} <= checks
    assert {'gluon hybridize', 'torch compile'} <= checks


def test_the_brought_attention_keeps_the_contract(installed_plugin):
    spec = registry.attention_spec('Gate')
    assert spec.origin == 'channel-gate-attention 0.1.0'
    assert registry.attention_names()[-1] == 'gate'
    failures, results = _failures('gate')
    assert not failures, failures
    assert any(r.check.startswith('gluon = torch') and r.passed for r in results)


def test_the_kit_catches_a_module_that_breaks_its_spec(installed_plugin, monkeypatch):
    """A spec whose count is off, and a PyTorch module whose function differs from the
    Gluon one's: each is a failed check, not a pass."""
    import channel_gate.torch

    spec = registry.attention_spec('gate')
    wrong = registry.AttentionSpec(
        name='gate',
        label='Gate',
        paper='',
        counts=lambda channels, size, options: (3 * channels, 0),
        gluon=spec.gluon,
        torch=spec.torch,
    )
    monkeypatch.setitem(registry._registry()[0], 'gate', wrong)
    failures, _ = _failures('gate')
    assert any('parameters' in line for line in failures)
    assert any('MACs' in line for line in failures)

    monkeypatch.setitem(registry._registry()[0], 'gate', spec)
    # A module that breaks (a wrong shape) is a failed check, never a crash of the kit.
    monkeypatch.setattr(channel_gate.torch.ChannelGate, 'forward', lambda self, x: x[:, :1])
    failures, results = _failures('gate')
    assert any(line.startswith('FAIL  torch shape') for line in failures), failures
    assert any(r.check.startswith('gluon shape') and r.passed for r in results)
    monkeypatch.undo()
    monkeypatch.setitem(registry._registry()[0], 'gate', spec)
    original = channel_gate.torch.ChannelGate.forward
    monkeypatch.setattr(
        channel_gate.torch.ChannelGate, 'forward', lambda self, x: original(self, x) * 1.01
    )
    failures, _ = _failures('gate')
    assert [line for line in failures if 'gluon = torch' in line]


def test_check_attention_command_reports_and_fails_clearly(capsys):
    assert main(['eca']) == 0
    out = capsys.readouterr().out
    assert 'ECA (eca, built-in)' in out and 'every check passed' in out
    assert main(['coordinate']) == 2
    assert 'unknown attention' in capsys.readouterr().err


def test_a_plugin_that_cannot_be_registered_is_left_out_with_its_reason(tmp_path, monkeypatch):
    """A broken package never takes a name or stops the others: the doctor says why."""
    from importlib.metadata import EntryPoint

    import models.registry as module

    module.FAILING = registry.AttentionSpec(
        name='failing', label='F', paper='', counts=lambda c, s, o: 1 / 0, torch='math:Thing'
    )
    module.NOWHERE = registry.AttentionSpec(
        name='nowhere', label='N', paper='', counts=lambda c, s, o: (0, 0), gluon='no_module'
    )
    monkeypatch.setattr(module, 'FAILING', module.FAILING, raising=False)
    monkeypatch.setattr(module, 'NOWHERE', module.NOWHERE, raising=False)
    broken = [
        EntryPoint('bad', 'no_such_module:SPEC', registry.ENTRY_POINT_GROUP),
        EntryPoint('se', 'models.registry:BUILTIN_SPECS', registry.ENTRY_POINT_GROUP),
        EntryPoint('failing', 'models.registry:FAILING', registry.ENTRY_POINT_GROUP),
        EntryPoint('nowhere', 'models.registry:NOWHERE', registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr('importlib.metadata.entry_points', lambda group: broken)
    registry.refresh()
    try:
        assert 'bad' not in registry.registered()
        problems = registry.plugin_problems()
        assert any('entry point bad' in p and 'does not load' in p for p in problems)
        assert any(
            'entry point se' in p and 'not a models.registry.AttentionSpec' in p for p in problems
        )
        # Found when it registers, not when a sweep counts its trials.
        assert any(
            'its counts fail on 16 channels' in p and 'ZeroDivisionError' in p for p in problems
        )
        assert any("'no_module' is not of the form package.module:Class" in p for p in problems)
        assert set(registry.registered()) == {s.name for s in registry.BUILTIN_SPECS}
        with pytest.raises(UnknownNameError, match='does not load'):
            registry.attention_spec('bad')
        from bench.doctor import WARN, check_attentions

        check = check_attentions()
        assert check.status == WARN and 'entry point bad' in check.found
    finally:
        monkeypatch.undo()
        registry.refresh()


def test_a_plugin_cannot_take_a_builtin_name_or_an_unsafe_one(monkeypatch):
    from importlib.metadata import EntryPoint

    import models.registry as module

    module.SHADOW = registry.AttentionSpec(
        name='se', label='SE?', paper='', counts=lambda c, s, o: (0, 0), torch='json:Y'
    )
    module.MARKUP = registry.AttentionSpec(
        name='<b>x', label='X', paper='', counts=lambda c, s, o: (0, 0), torch='x:Y'
    )
    points = [
        EntryPoint('se', 'models.registry:SHADOW', registry.ENTRY_POINT_GROUP),
        EntryPoint('<b>x', 'models.registry:MARKUP', registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr('importlib.metadata.entry_points', lambda group: points)
    registry.refresh()
    try:
        assert registry.attention_spec('se').origin == 'built-in'
        problems = ' '.join(registry.plugin_problems())
        assert 'taken by built-in' in problems and 'lower-case name' in problems
    finally:
        monkeypatch.undo()
        del module.SHADOW, module.MARKUP
        registry.refresh()


def test_the_package_is_found_by_a_fresh_interpreter(installed_plugin):
    _, env = installed_plugin
    done = subprocess.run(
        [sys.executable, '-m', 'models.check_attention', 'gate'],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'Gate (gate, channel-gate-attention 0.1.0)' in done.stdout


def _sweep_with_the_plugin(tmp_path, backend='gluon'):
    from tests.sweep_helpers import write_sweep, write_tiny_data

    data = write_tiny_data(tmp_path / 'cifar', train=64, test=32)
    return write_sweep(
        tmp_path,
        data,
        name='brought',
        models=('cifar_resnet8_v1',),
        attentions=('none', 'Gate'),
        extra={
            'outputs': {
                'results': 'results',
                'readme': None,
                'figures': 'figures',
                'report': 'report.html',
            }
        },
    )


@pytest.mark.slow
def test_a_sweep_trains_and_reports_the_brought_attention_and_refuses_it_once_gone(
    installed_plugin, tmp_path
):
    from pathlib import Path

    import pandas as pd

    root = Path(__file__).resolve().parents[1]
    _, env = installed_plugin
    path = _sweep_with_the_plugin(tmp_path)
    command = [sys.executable, str(root / 'run_sweep.py'), '--config', str(path)]
    env = dict(env, PYTHONUNBUFFERED='1')
    env.pop('RAY_ADDRESS', None)
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = pd.read_csv(tmp_path / 'results' / 'brought' / 'results.csv')
    assert sorted(results['attention']) == ['gate', 'none']
    assert set(results['status']) == {'done'}
    html = (tmp_path / 'report.html').read_text()
    assert '>Gate<' in html and 'Gather-Excite' not in html  # its label, escaped like any

    # Uninstalled: the sweep stops before any trial, naming the attention, and the
    # stored results stay as they were.
    stored = sorted(p.name for p in (tmp_path / 'results' / 'brought' / 'trials').iterdir())
    without = {k: v for k, v in env.items() if k != 'PYTHONPATH'}
    gone = subprocess.run(
        command, cwd=tmp_path, env=without, capture_output=True, text=True, timeout=600
    )
    assert gone.returncode != 0
    message = gone.stdout + gone.stderr
    assert "unknown attention 'gate'" in message
    assert 'entry point group channel_attention.attentions' in message
    assert 'Traceback' not in message
    after = sorted(p.name for p in (tmp_path / 'results' / 'brought' / 'trials').iterdir())
    assert after == stored
    # The reports of the store say what is missing, not that the store is damaged.
    reports = subprocess.run(
        [sys.executable, '-m', 'reports', str(tmp_path / 'results' / 'brought')],
        cwd=root,
        env=without,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reports.returncode != 0
    assert 'names attention(s) this installation does not know: gate' in reports.stderr
    assert 'the stored results are untouched' in reports.stderr

    # A sweep of the same store without it: its stored trial stays listed, as not
    # current and why, in results.csv and the report; the table shows vanilla only.
    path.write_text(path.read_text().replace('- Gate\n', ''))
    assert 'Gate' not in path.read_text()
    rendered = subprocess.run(
        command + ['--report-only'], cwd=tmp_path, env=without, capture_output=True, text=True
    )
    assert rendered.returncode == 0, rendered.stdout[-3000:] + rendered.stderr[-3000:]
    results = pd.read_csv(tmp_path / 'results' / 'brought' / 'results.csv')
    (gate,) = results[results['attention'] == 'gate'].itertuples()
    assert (gate.status, bool(gate.in_sweep)) == ('done', False)
    assert (
        "attention 'gate' cannot be used here (no installed package registers it" in gate.problems
    )
    html = (tmp_path / 'report.html').read_text()
    assert 'attention &#39;gate&#39; cannot be used here (no installed package' in html
    assert '>Gate<' not in html.split('</table>')[0]


def test_a_cell_whose_backend_lacks_the_attention_is_refused_before_training(
    installed_plugin, tmp_path, monkeypatch
):
    from bench.sweep.config import ConfigError, load_config

    spec = registry.attention_spec('gate')
    torch_only = registry.AttentionSpec(
        name='gate',
        label='Gate',
        paper='',
        counts=spec.counts,
        torch=spec.torch,
        origin=spec.origin,
    )
    monkeypatch.setitem(registry._registry()[0], 'gate', torch_only)
    path = _sweep_with_the_plugin(tmp_path)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert 'attention gate (channel-gate-attention 0.1.0) has no gluon module' in str(error.value)
    assert 'to torch' in str(error.value)
    # Asked for the backend it has, the same sweep is fine.
    assert load_config(path, ['recipe.backend=torch']).config.attentions == ['none', 'gate']


def test_an_installed_attention_never_takes_an_option_of_bench_train(monkeypatch):
    """bench.train's --se/--eca/--gct flags are the built-ins' only: a package's attention
    named like an option (seed) is --attention seed, and the parser still builds."""
    from bench.train import parse_args

    spec = registry.AttentionSpec(
        name='seed',
        label='Seed',
        paper='',
        counts=lambda c, s, o: (0, 0),
        gluon='math:Thing',
        origin='seed-attention 1.0',
    )
    monkeypatch.setitem(registry._registry()[0], 'seed', spec)
    _, args = parse_args(['--attention', 'seed', '--seed', '3'])
    assert (args.attention, args.seed) == ('seed', 3)


def test_the_doctor_names_an_installed_attention_whose_module_does_not_import(monkeypatch):
    from bench.doctor import WARN, attentions_of, check_attentions

    spec = registry.AttentionSpec(
        name='ghost',
        label='Ghost',
        paper='',
        counts=lambda c, s, o: (0, 0),
        torch='json:NoSuchClass',
        origin='ghost-attention 0.1',
    )
    monkeypatch.setitem(registry._registry()[0], 'ghost', spec)
    assert 'ghost' not in attentions_of('torch') and 'se' in attentions_of('torch')
    check = check_attentions()
    assert check.status == WARN
    assert "attention 'ghost' (ghost-attention 0.1): cannot import its torch module" in check.found


def test_names_ignore_case_and_spaces_in_a_sweep_and_its_overrides(tmp_path):
    import yaml

    from bench.sweep.config import ConfigError, expand, load_config

    base = {
        'name': 't',
        'models': ['cifar_resnet8_v1'],
        'attentions': ['none', ' SE', 'CBAM'],
        'overrides': [{'match': {'attention': 'cbam '}, 'attention_kwargs': {'reduction': 4}}],
    }
    path = tmp_path / 'sweep.yaml'
    path.write_text(yaml.safe_dump(base))
    config = load_config(path).config
    assert config.attentions == ['none', 'se', 'cbam']
    cbam = [s for s in expand(config) if s.attention == 'cbam']
    assert cbam[0].attention_kwargs == {'reduction': 4}
    path.write_text(yaml.safe_dump({**base, 'attentions': ['se', ' Se ']}))
    with pytest.raises(ConfigError, match='attention listed more than once: se'):
        load_config(path)
    path.write_text(
        yaml.safe_dump(
            {
                **base,
                'overrides': [
                    {'match': {'attention': 'simam'}, 'attention_kwargs': {'e_lambda': 1e-300}}
                ],
            }
        )
    )
    with pytest.raises(ConfigError, match='simam'):
        load_config(path)


def test_a_stored_trial_says_whether_its_attention_is_missing_or_left_out(monkeypatch):
    from bench import records

    # 'lost_gate': no package registers it (the fixture package may be installed now).
    assert records.unregistered_attention_problem('se') is None
    missing = records.unregistered_attention_problem('lost_gate')
    assert "attention 'lost_gate' cannot be used here (no installed package registers" in missing
    assert 'its name and version are in the trial id' in missing
    left_out = (
        'entry point lost_gate = broken:Spec (gate-broken 0.1) does not load: no module broken'
    )
    monkeypatch.setattr(records, 'plugin_problems', lambda: (left_out,))
    problem = records.unregistered_attention_problem('lost_gate')
    assert f'({left_out}; `python -m bench.doctor` says more)' in problem
    assert 'no installed package' not in problem
