"""Command-line overrides of a sweep file: key=value, validated as the file is."""

import json

import pytest
import yaml

from bench.sweep.config import ConfigError, expand, load_config, trial_id
from run_sweep import main as run_sweep

from .sweep_helpers import write_sweep, write_tiny_data

IDENTITY = {'digest': 'd' * 40, 'official': False}


@pytest.fixture
def sweep(tmp_path):
    return write_sweep(
        tmp_path,
        tmp_path / 'data',
        overrides=[{'match': {'attention': 'eca'}, 'recipe': {'lr': 0.01}}],
    )


def _ids(loaded):
    return [trial_id(spec, IDENTITY) for spec in expand(loaded.config)]


def test_every_kind_of_value_is_set_as_the_file_would_set_it(sweep, tmp_path):
    overrides = [
        'recipe.epochs=3',  # a whole number
        'recipe.lr=0.02',  # a real number
        'recipe.random_flip=false',  # a truth value
        'recipe.optimizer=sgd',  # a word
        'seeds=[0, 1]',  # a list
        "models=['cifar_resnet8_v1']",
        'overrides.0.recipe.lr=0.5',  # into a list item, by index
        'outputs.report=null',  # null
        'resources.cpus_per_trial=2',
    ]
    loaded = load_config(sweep, overrides)
    config = loaded.config
    assert (config.recipe.epochs, config.recipe.lr, config.recipe.random_flip) == (3, 0.02, False)
    assert config.recipe.optimizer == 'sgd' and config.seeds == [0, 1]
    assert config.models == ['cifar_resnet8_v1'] and config.overrides[0].recipe == {'lr': 0.5}
    assert config.resources.cpus_per_trial == 2 and config.outputs.report is None
    assert loaded.overrides == tuple(overrides) and loaded.variant_of == 'tiny'
    # The same sweep written in a file has the same trials.
    values = yaml.safe_load(sweep.read_text())
    values['recipe'].update(epochs=3, lr=0.02, random_flip=False, optimizer='sgd')
    values.update(seeds=[0, 1], models=['cifar_resnet8_v1'], name=config.name)
    values['overrides'][0]['recipe']['lr'] = 0.5
    written = tmp_path / 'written.yaml'
    written.write_text(yaml.safe_dump(values))
    assert _ids(load_config(written)) == _ids(loaded)


def test_a_number_in_exponent_form_is_a_number_in_the_file_and_on_the_command_line(sweep, tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-2 as text; a learning rate is written that way."""
    loaded = load_config(sweep, ['recipe.lr=1e-2', 'recipe.wd=5E-4'])
    assert (loaded.config.recipe.lr, loaded.config.recipe.wd) == (0.01, 0.0005)
    written = tmp_path / 'exponent.yaml'
    written.write_text(
        sweep.read_text().replace('lr_decay_epochs:', 'lr: 1e-2\n  lr_decay_epochs:')
    )
    assert load_config(written).config.recipe.lr == 0.01
    assert _ids(load_config(written)) == _ids(load_config(sweep, ['recipe.lr=0.01']))
    # Text stays text: a name or an option that only looks alike.
    assert load_config(sweep, ['name=1e']).config.name == '1e'


def test_a_variant_has_its_own_store_and_reports_and_resumes_under_the_same_name(sweep):
    plain = load_config(sweep)
    variant = load_config(sweep, ['recipe.epochs=2'])
    assert variant.config.name.startswith('tiny-') and variant.store_dir != plain.store_dir
    assert variant.config.outputs.figures == f'results/{variant.config.name}/figures'
    assert load_config(sweep, ['recipe.epochs=2']).config.name == variant.config.name
    assert load_config(sweep, ['recipe.epochs=3']).config.name != variant.config.name
    named = load_config(sweep, ['recipe.epochs=2', 'name=smoke', 'outputs.figures=f'])
    assert named.config.name == 'smoke' and named.config.outputs.figures == 'f'
    assert named.config.outputs.readme == 'results/smoke/README.md'
    # Options of the run keep the sweep itself: same name, store, outputs and trials.
    run_options = load_config(sweep, ['resources.cpus_per_trial=2', 'report.overhead=false'])
    assert run_options.variant_of is None and run_options.store_dir == plain.store_dir
    assert run_options.config.outputs == plain.config.outputs
    assert _ids(run_options) == _ids(plain)


def test_an_unknown_key_lists_the_valid_ones_and_a_bad_value_reads_as_in_the_file(sweep, tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(sweep, ['recipe.epoch=1'])
    assert 'recipe.epoch: unknown key; valid keys: epochs, batch_size' in str(error.value)
    with pytest.raises(ConfigError) as error:
        load_config(sweep, ['typo=1'])
    assert 'typo: unknown key; valid keys: name, models' in str(error.value)
    with pytest.raises(ConfigError) as from_line:
        load_config(sweep, ['recipe.epochs=0'])
    values = yaml.safe_load(sweep.read_text())
    values['recipe']['epochs'] = 0
    bad = tmp_path / 'bad.yaml'
    bad.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError) as from_file:
        load_config(bad)
    assert str(from_line.value) == str(from_file.value).replace(
        str(bad), f'{sweep} with recipe.epochs=0'
    )
    for wrong, expected in (
        ('epochs', 'an override is key=value'),
        ('recipe..epochs=1', 'an override is key=value'),
        ('seeds=[0', 'the value is not valid YAML'),
        ('overrides.3.recipe.lr=1', 'overrides.3 is not an item of the list'),
        ('name.first=x', "name holds a value \\('tiny'\\), not keys"),
        ('seeds=1', 'seeds: Input should be a valid list'),
    ):
        with pytest.raises(ConfigError, match=expected):
            load_config(sweep, [wrong])


def test_reports_of_a_variant_not_trained_yet_are_refused_not_an_empty_store(sweep, capsys):
    capsys.readouterr()
    assert run_sweep(['--config', str(sweep), '--report-only', 'recipe.lr=0.07']) == 2
    err = capsys.readouterr().err
    assert 'error: tiny.yaml with recipe.lr=0.07: the variant tiny-' in err
    assert 'has no store yet' in err and 'all but resources.*, outputs.*, report.*' in err
    assert not (sweep.parent / 'results').exists()


def test_sweep_json_and_the_caption_record_the_overrides(sweep, tmp_path, capsys):
    write_tiny_data(tmp_path / 'data')
    args = ['--config', str(sweep), '--report-only', 'recipe.epochs=2', 'outputs.report=r.html']
    variant = load_config(sweep, args[3:])
    variant.store_dir.mkdir(parents=True)  # as a run of the variant leaves it
    assert run_sweep(args) == 0
    manifest = json.loads((variant.store_dir / 'sweep.json').read_text())
    assert manifest['sweep_file'] == 'tiny.yaml'
    # Only what changes what trains is the sweep's: where the report goes is not.
    assert manifest['overrides'] == ['recipe.epochs=2']
    assert 'Sweep tiny.yaml with recipe.epochs=2.' in (variant.store_dir / 'table.md').read_text()
    assert (tmp_path / 'r.html').is_file()
    # Without overrides nothing of the kind is recorded.
    assert run_sweep(['--config', str(sweep), '--report-only']) == 0
    plain = json.loads((load_config(sweep).store_dir / 'sweep.json').read_text())
    assert 'overrides' not in plain and 'sweep_file' not in plain


def test_the_gpu_sweep_is_the_original_table_on_the_torch_backend():
    """What a Hopper card runs, and what the refusal of gluon there points to."""
    from bench.gpu import GPU, GPUError, check_gpus

    root = __import__('pathlib').Path(__file__).resolve().parents[1]
    torch_sweep = load_config(root / 'sweeps' / 'original-table-torch.yaml')
    gluon_sweep = load_config(root / 'sweep.yaml')
    torch_specs, gluon_specs = expand(torch_sweep.config), expand(gluon_sweep.config)
    assert [s.name for s in torch_specs] == [s.name for s in gluon_specs]
    for torch_spec, gluon_spec in zip(torch_specs, gluon_specs):
        assert torch_spec.recipe.backend == 'torch'
        assert torch_spec.recipe.precision == 'amp_bfloat16'
        same = {'backend': 'torch', 'precision': 'amp_bfloat16'}
        assert torch_spec.recipe == gluon_spec.recipe.model_copy(update=same)
    assert torch_sweep.resolve(torch_sweep.config.outputs.readme) != gluon_sweep.resolve(
        gluon_sweep.config.outputs.readme
    )
    hopper = GPU(0, 'NVIDIA H100 80GB HBM3', (9, 0))
    with pytest.raises(GPUError, match='sweeps/original-table-torch.yaml'):
        check_gpus(1, gpus=[hopper], gpu_build=True)


def test_a_variant_is_named_by_what_it_changes_in_any_order_and_never_shares_the_store(sweep):
    one = load_config(sweep, ['recipe.epochs=2', 'seeds=[0, 1]'])
    assert load_config(sweep, ['seeds=[0, 1]', 'recipe.epochs=2']).config.name == one.config.name
    # Setting a value to what the file holds changes nothing.
    unchanged = load_config(sweep, ['recipe.epochs=1', 'resources.cpus_per_trial=2'])
    assert unchanged.variant_of is None and unchanged.changes == ()
    assert unchanged.config.name == 'tiny'
    with pytest.raises(ConfigError, match="name=tiny is the sweep file's own name"):
        load_config(sweep, ['recipe.epochs=2', 'name=tiny'])
    for wrong, expected in (
        ('recipe={1: 2, a: 3}', 'Keys should be strings'),
        ('recipe.epochs=' + '9' * 5000, 'the value is not valid YAML'),
        ('outputs.report="/tmp/a\\0b.html"', 'a path cannot hold a NUL character'),
        ('data.root="/tmp/x\\0"', 'a path cannot hold a NUL character'),
    ):
        with pytest.raises(ConfigError, match=expected):
            load_config(sweep, [wrong])


def test_a_sweep_file_with_a_number_too_long_to_read_is_one_message(tmp_path):
    path = tmp_path / 'long.yaml'
    path.write_text(
        'name: x\nmodels: [cifar_resnet8_v1]\nattentions: [none]\nseeds: [' + '9' * 5000 + ']\n'
    )
    with pytest.raises(ConfigError, match='a value cannot be read'):
        load_config(path)


def test_mixed_precision_with_no_gpu_here_is_named_before_anything_trains(monkeypatch, capsys):
    from bench import gpu

    monkeypatch.setattr(gpu, 'physical_gpus', lambda: [])
    monkeypatch.delenv('RAY_ADDRESS', raising=False)
    root = __import__('pathlib').Path(__file__).resolve().parents[1]
    args = ['--config', str(root / 'sweeps' / 'original-table-torch.yaml'), '--dry-run']
    assert run_sweep(args) == 2
    err = capsys.readouterr().err
    assert 'precision amp_bfloat16 runs on GPUs only and this machine has none' in err
    assert 'recipe.precision=float32' in err
    # As the message says: in float32 it plans (a variant of the sweep).
    assert run_sweep([*args, 'recipe.precision=float32']) == 0


def test_overrides_may_stand_between_flags_and_the_plan_asks_what_a_run_asks(
    sweep, tmp_path, capsys, monkeypatch
):
    import bench.gpu

    write_tiny_data(tmp_path / 'data')
    monkeypatch.setattr(bench.gpu, 'physical_gpus', lambda: [])
    monkeypatch.delenv('RAY_ADDRESS', raising=False)
    capsys.readouterr()
    args = ['--dry-run', 'resources.gpus_per_trial=1', '--retry-failed', 'recipe.epochs=2']
    assert run_sweep(['--config', str(sweep), *args]) == 0
    out = capsys.readouterr().out
    assert 'tiny.yaml with resources.gpus_per_trial=1, recipe.epochs=2: the variant' in out
    # No GPU here: a run asks Ray for CPUs alone (the driver's fallback), and so does the plan.
    assert 'gpus_per_trial ignored: trials run on CPUs' in out
    assert 'asks 1 CPU\n' in out and 'GPU\n' not in out.split('devices:')[1]


def test_an_interrupted_run_names_the_outputs_rendered_from_its_store(tmp_path):
    """Ctrl-C ends a run before it renders: the outputs rendered from this store before
    still show it as it was then, which the run says, with the command that brings them
    up to date; a README without its block, or outputs of another store, are not named."""
    import run_sweep
    from bench.store import ResultsStore
    from reports import render_all

    from .store_helpers import add_trial, record_sweep

    outputs = {'readme': 'README.md', 'report': 'report.html', 'figures': 'figures'}
    path = write_sweep(tmp_path, tmp_path / 'data', models=['cifar_resnet20_v1'],
                       attentions=['none'], extra={'outputs': outputs})  # fmt: skip
    _, args = run_sweep.parse_args(
        ['--config', str(path), 'resources.max_failures=1', '--only', 'none']
    )
    loaded = load_config(args.config, args.overrides)
    readme, report = loaded.resolve('README.md'), loaded.resolve('report.html')
    readme.write_text('# My project\n')
    loaded.resolve('figures').mkdir()
    assert run_sweep.stale_outputs_hint(loaded, args) == []  # nothing rendered from it yet

    store = ResultsStore(loaded.store_dir)
    add_trial(store, 'cifar_resnet20_v1', 'none', 0, 0.04, 0.91)
    record_sweep(store, ['cifar_resnet20_v1'], ['none'])
    render_all(store.root, readme=readme, report_path=report, insert=True, figures=False)
    command = f'`python run_sweep.py --config {path} resources.max_failures=1 --report-only`'
    assert run_sweep.stale_outputs_hint(loaded, args) == [
        f'the table in {readme.as_posix()} and {report.as_posix()} still show the store as it '
        f'was when they were last rendered; {command} renders them from what it holds now'
    ]
    other = ResultsStore(tmp_path / 'other')
    add_trial(other, 'cifar_resnet20_v1', 'none', 0, 0.04, 0.91)
    record_sweep(other, ['cifar_resnet20_v1'], ['none'])
    report.unlink()
    render_all(other.root, report_path=report, figures=False)
    assert run_sweep.stale_outputs_hint(loaded, args) == [
        f'the table in {readme.as_posix()} still shows the store as it was when it was last '
        f'rendered; {command} renders it from what it holds now'
    ]
    # The figures alone (plural), and a password in an override never printed.
    readme.write_text('# My project\n')
    render_all(store.root, figures_dir=loaded.resolve('figures'))
    _, args = run_sweep.parse_args(
        ['--config', str(path), 'tracking.mlflow=https://bob:hunter2@example.com']
    )
    loaded = load_config(args.config, args.overrides)
    (hint,) = run_sweep.stale_outputs_hint(loaded, args)
    assert hint.startswith(
        f'the figures in {loaded.resolve("figures").as_posix()} still show the store as it '
        'was when they were last rendered; '
    )
    assert 'hunter2' not in hint and 'https://bob:***@example.com --report-only`' in hint
    assert hint.endswith('renders them from what it holds now')
