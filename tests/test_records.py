"""Stores written by earlier versions read through the one trial record.

The fixtures under tests/fixtures/stores/v<N> were written by the store and sweep code of
the commit that introduced layout N of spec.json (tests/fixtures/stores/make.py wrote
them with that commit's own code): a finished, a failed and a partial trial each.
"""

import json
import shutil
from pathlib import Path

import pytest

from bench.records import (
    DONE,
    FAILED,
    PENDING,
    TRIAL_FILE_VERSIONS,
    TrialRecord,
    trial_file_version,
    upgrade_trial_file,
)
from bench.store import ResultsStore, read_json_checked
from bench.sweep.config import load_config
from bench.sweep.plan import sweep_manifest
from bench.trial.recipe import Recipe, TrialSpec
from reports.store import load_manifest, load_trials, split_by_sweep

FIXTURES = Path(__file__).parent / 'fixtures' / 'stores'
IDENTITY = {
    'name': 'sklearn-digits',
    'official': False,
    'digest': 'f' * 64,
    'train_images': 1437,
    'test_images': 360,
}
SWEEP = (FIXTURES / 'sweep.yaml').read_text()


@pytest.fixture(params=sorted(TRIAL_FILE_VERSIONS))
def stored(request, tmp_path):
    """(layout version, a copy of the store that version's code wrote)."""
    store = tmp_path / f'v{request.param}'
    shutil.copytree(FIXTURES / f'v{request.param}', store)
    return request.param, store


def test_every_layout_has_a_fixture_written_by_its_commit():
    for version in TRIAL_FILE_VERSIONS:
        commit = (FIXTURES / f'v{version}' / 'COMMIT').read_text().strip()
        assert TRIAL_FILE_VERSIONS[version].startswith(commit)
        for spec_file in (FIXTURES / f'v{version}' / 'trials').glob('*/spec.json'):
            assert trial_file_version(json.loads(spec_file.read_text())) == version


def test_an_earlier_layout_reads_as_one_record_with_every_default(stored):
    version, root = stored
    records = {r.name: r for r in ResultsStore(root).trial_records()}
    finished = records['cifar_resnet20_v1-none-s0']
    assert finished.status == DONE and finished.epochs_done == 2
    assert finished.final['val_acc'] == 0.7 and finished.final['total_seconds'] == 20.0
    # What the layout left out, at the value it meant.
    assert finished.network_revision == 1
    assert finished.spec.recipe == Recipe(epochs=2, batch_size=32, lr_decay_epochs=(1,))
    assert finished.spec.recipe.backend == 'gluon' and finished.spec.recipe.tf32
    assert finished.model_stats == (None if version < 2 else {'params': 272474, 'macs': 40810000})
    assert finished.data['digest'] == 'f' * 64
    failed = records['cifar_resnet20_v1-se-s0']
    assert failed.status == FAILED and 'training diverged' in failed.error
    partial = records['cifar_resnet20_v2-none-s0']
    assert partial.status == PENDING and not partial.problems
    assert partial.network_revision == (2 if version >= 3 else 1)


def test_an_earlier_layout_keeps_its_trial_ids_and_its_results_row(stored):
    """Trial ids of the v1 networks are those the old code computed; the row of
    results.csv holds the recipe as stored (options at their defaults left out)."""
    _, root = stored
    for record in ResultsStore(root).trial_records():
        if record.spec.model.endswith('_v1'):
            assert record.spec.trial_id(IDENTITY) == record.trial_id
        stored_spec = read_json_checked(root / 'trials' / record.trial_id / 'spec.json').value
        row = record.row()
        assert json.loads(row['recipe']) == stored_spec['spec']['recipe']
        assert row['backend'] == 'gluon' and row['epochs'] == 2


def test_a_v2_trial_of_an_earlier_definition_is_listed_apart_with_why(stored, tmp_path):
    version, root = stored
    sweep = tmp_path / 'sweep.yaml'
    sweep.write_text(SWEEP)
    manifest = sweep_manifest(load_config(sweep).config, IDENTITY)
    current, other = split_by_sweep(load_trials(root, manifest), manifest)
    by_name = current.set_index('name')
    assert by_name.loc['cifar_resnet20_v1-none-s0', 'status'] == DONE
    if version < 3:  # the v2 network changed in revision 2: its old trial is not current
        assert by_name.loc['cifar_resnet20_v2-none-s0', 'status'] == PENDING
        assert list(other['reason']) == ['trained by network definition revision 1 (now 2)']
    else:
        assert other.empty


def test_the_upgrade_fills_a_manifest_entry_and_refuses_nothing_it_reads():
    spec = TrialSpec(model='cifar_resnet20_v2', recipe=Recipe(epochs=3))
    entry = {'trial_id': 'a' * 12, 'name': spec.name, 'spec': spec.to_dict(), 'network_revision': 2}
    upgraded = upgrade_trial_file(entry)
    assert upgraded['spec'] == spec and upgraded['model_stats'] is None
    assert upgraded['data'] is None and upgraded['network_revision'] == 2
    record = TrialRecord.from_trial_file(entry, data=IDENTITY)
    assert record.data == IDENTITY and record.status == PENDING and record.will_train


def _edit_spec(root, name, change):
    """Apply `change` to the spec.json of the stored trial called `name`."""
    for spec_file in (root / 'trials').glob('*/spec.json'):
        value = json.loads(spec_file.read_text())
        if value['name'] == name:
            change(value)
            spec_file.write_text(json.dumps(value))
            return spec_file
    raise AssertionError(name)


def test_a_later_versions_keys_in_a_stored_spec_are_read_past(tmp_path):
    root = tmp_path / 'store'
    shutil.copytree(FIXTURES / 'v3', root)
    _edit_spec(root, 'cifar_resnet20_v1-none-s0', lambda v: v['spec'].update(future=1))
    records = {r.name: r for r in ResultsStore(root).trial_records()}
    assert records['cifar_resnet20_v1-none-s0'].status == DONE


def test_a_stored_recipe_that_breaks_todays_rules_is_listed_with_why(tmp_path):
    """A hand-edited (or other version's) recipe never makes its trial vanish: it is
    listed as stored, with the problem; where the sweep lists the trial's id, the id says
    what trained there, so the sweep's record describes it, with the problem."""
    root = tmp_path / 'store'
    shutil.copytree(FIXTURES / 'v3', root)
    spec_file = _edit_spec(
        root, 'cifar_resnet20_v1-none-s0', lambda v: v['spec']['recipe'].update(lr=-1)
    )
    record = {r.name: r for r in ResultsStore(root).trial_records()}['cifar_resnet20_v1-none-s0']
    assert record.status == DONE and record.spec.recipe.lr == -1
    assert record.problems == (
        f"{spec_file}: its recipe breaks this version's rules (recipe.lr: Input should be "
        'greater than 0 (found -1)); it is shown as stored',
    )
    assert json.loads(record.row()['recipe'])['lr'] == -1
    sweep = tmp_path / 'sweep.yaml'
    sweep.write_text(SWEEP)
    manifest = sweep_manifest(load_config(sweep).config, IDENTITY)
    current, _ = split_by_sweep(load_trials(root, manifest), manifest)
    shown = current.set_index('name').loc['cifar_resnet20_v1-none-s0']
    assert json.loads(shown['recipe'])['lr'] == 0.003 and shown['status'] == DONE
    assert shown['problems'] == [
        f'{spec_file}: describes another trial than the one its id names (its recipe differs '
        "from the sweep's); the sweep's record of the trial is used, and the next run rewrites it"
    ]


def test_a_trial_without_its_own_data_identity_does_not_borrow_the_sweeps(tmp_path):
    root = tmp_path / 'store'
    shutil.copytree(FIXTURES / 'v3', root)
    _edit_spec(root, 'cifar_resnet20_v1-none-s0', lambda v: v.update(data=None))
    sweep = tmp_path / 'sweep.yaml'
    sweep.write_text(SWEEP)
    manifest = sweep_manifest(load_config(sweep).config, IDENTITY)
    records = {r.name: r for r in ResultsStore(root).trial_records(manifest)}
    assert records['cifar_resnet20_v1-none-s0'].data == {}
    assert records['cifar_resnet20_v1-se-s0'].data['digest'] == 'f' * 64


def test_bench_train_on_a_damaged_checkpoint_is_one_message(tiny_cifar_root, tmp_path, capsys):
    from bench.train import main as train_main

    checkpoint = tmp_path / 'checkpoints' / 'epoch-0001'
    checkpoint.mkdir(parents=True)
    for text, expected in (
        ('{"epoch": "x"}', 'not the state.json this project writes: epoch'),
        ('{"epoch": ', 'Expecting value'),
    ):
        (checkpoint / 'state.json').write_text(text)
        code = train_main(
            ['--model', 'cifar_resnet8_v1', '--data-root', str(tiny_cifar_root),
             '--no-download', '--num-gpus', '0', '--quiet', '--num-epochs', '2',
             '--batch-size', '16', '--checkpoint-dir', str(tmp_path / 'checkpoints')]
        )  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and expected in err and 'Traceback' not in err, err


def test_results_csv_is_what_the_code_before_the_one_record_wrote(stored):
    """The record changed how trials are read, not what is read: the results.csv of
    every fixture equals the one the previous code (f70d0e6) made of it."""
    version, root = stored
    expected = (FIXTURES / f'v{version}' / 'results-f70d0e6.csv').read_text()
    store = ResultsStore(root)
    store.write_results_csv(store.read_manifest())
    assert (root / 'results.csv').read_text() == expected


def test_the_sweep_record_of_layout_3_reads_as_todays(tmp_path):
    """sweep.json as the code of 6ad0f4c wrote it: its entries upgrade to the records of
    today's manifest for the same sweep."""
    root = tmp_path / 'store'
    shutil.copytree(FIXTURES / 'v3', root)
    stored = load_manifest(root)
    sweep = tmp_path / 'sweep.yaml'
    sweep.write_text(SWEEP)
    today = sweep_manifest(load_config(sweep).config, IDENTITY)
    assert [e['trial_id'] for e in stored['trials']] == [e['trial_id'] for e in today['trials']]
    for old, new in zip(stored['trials'], today['trials']):
        assert upgrade_trial_file(old) == upgrade_trial_file(new)
    current, other = split_by_sweep(load_trials(root, stored), stored)
    expected, _ = split_by_sweep(load_trials(root, today), today)
    assert current.equals(expected) and other.empty
