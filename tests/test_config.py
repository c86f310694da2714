"""sweep.yaml validation, expansion and trial ids (no training)."""

import textwrap

import pytest

from bench.sweep.config import (
    ConfigError,
    expand,
    load_config,
    matches_only,
    parse_config,
    parse_only,
    trial_id,
)
from bench.trial.recipe import Recipe

IDENTITY = {'digest': 'abc', 'official': False}
BASE = {'name': 't', 'models': ['cifar_resnet20_v1'], 'attentions': ['none', 'eca']}


def errors_of(values):
    with pytest.raises(ConfigError) as error:
        parse_config(values, 'my.yaml')
    return str(error.value)


def test_shipped_sweeps_load_and_expand():
    table = load_config('sweep.yaml')
    specs = expand(table.config)
    assert len(specs) == 16
    assert {s.model for s in specs} == {
        'cifar_resnet20_v1',
        'cifar_resnet20_v2',
        'cifar_resnet56_v1',
        'cifar_resnet56_v2',
    }
    assert {s.attention for s in specs} == {'none', 'se', 'eca', 'gct'}
    assert all(s.recipe == Recipe() for s in specs)  # the original recipe
    demo = load_config('sweeps/demo.yaml')
    assert demo.config.data.dataset == 'demo' and len(expand(demo.config)) == 16
    assert demo.store_dir.name == 'demo'
    simam = load_config('sweeps/simam-paper.yaml')
    specs = expand(simam.config)
    assert len(specs) == 2 * 6 * 3
    assert {s.model for s in specs} == {'cifar_resnet20_simam', 'cifar_resnet56_simam'}
    assert simam.config.attentions == ['none', 'se', 'cbam', 'eca', 'srm', 'simam']
    recipe = specs[0].recipe
    assert (recipe.optimizer, recipe.lr, recipe.momentum, recipe.wd) == ('sgd', 0.1, 0.9, 5e-4)
    assert (recipe.epochs, recipe.batch_size, recipe.lr_decay_epochs) == (164, 128, (82, 123))


def test_unknown_key_names_file_path_and_valid_keys():
    message = errors_of({**BASE, 'recipe': {'lr_decay_epoch': [81]}})
    assert message.startswith('my.yaml: recipe.lr_decay_epoch: unknown key')
    assert 'lr_decay_epochs' in message
    message = errors_of({**BASE, 'resources': {'gpus': 1}})
    assert 'my.yaml: resources.gpus: unknown key; valid keys: cpus_per_trial' in message
    assert 'my.yaml: seed: unknown key' in errors_of({**BASE, 'seed': 1})


def test_wrong_type_says_expected_and_found():
    message = errors_of({**BASE, 'recipe': {'lr': 'fast'}})
    assert 'my.yaml: recipe.lr:' in message and 'valid number' in message
    assert "'fast'" in message
    message = errors_of({**BASE, 'seeds': 'zero'})
    assert 'my.yaml: seeds:' in message and "'zero'" in message
    assert 'gpus_per_trial' in errors_of({**BASE, 'resources': {'gpus_per_trial': 1.5}})


@pytest.mark.parametrize(
    'name', ['../../etc', 'a/b', '.hidden', '<b>x</b>', 'two words', '', 'café', '١٢']
)
def test_a_sweep_name_is_one_folder_name_said_in_words(name):
    message = errors_of({**BASE, 'name': name})
    assert 'name: a sweep name is one folder name: ASCII letters and digits (A-Z, a-z, 0-9)' in (
        message
    )
    assert f'(found {name!r})' in message and 'pattern' not in message


def test_a_sweep_name_of_those_characters_is_taken():
    assert parse_config({**BASE, 'name': 'Se-vs.eca_2'}, 'my.yaml').name == 'Se-vs.eca_2'


def test_unknown_model_and_attention_list_the_valid_ones():
    message = errors_of({**BASE, 'models': ['cifar_resnet20_v3']})
    assert 'my.yaml: models:' in message and 'cifar_resnet56_v2' in message
    message = errors_of({**BASE, 'attentions': ['none', 'coord']})
    assert 'my.yaml: attentions:' in message and 'none, se, eca, gct, cbam, srm, simam' in message
    assert 'entry point group channel_attention.attentions' in message
    assert (
        "my.yaml: recipe.optimizer: Input should be 'adam', 'sgd' or 'nag' (found 'adamw')"
        in errors_of({**BASE, 'recipe': {'optimizer': 'adamw'}})
    )
    assert 'required key is missing' in errors_of({'name': 't', 'models': ['cifar_resnet20_v1']})
    assert 'listed more than once' in errors_of({**BASE, 'attentions': ['se', 'se']})


def test_overrides_are_checked_and_applied():
    message = errors_of(
        {**BASE, 'overrides': [{'match': {'attention': 'se'}, 'recipe': {'lr': 0.1}}]}
    )
    assert "overrides.0.match.attention: 'se' is not in attentions" in message
    message = errors_of(
        {**BASE, 'overrides': [{'match': {'attention': 'eca'}, 'recipe': {'bogus': 1}}]}
    )
    assert (
        'my.yaml: overrides.0.recipe.bogus: unknown key; valid keys: epochs, batch_size' in message
    )
    config = parse_config(
        {
            **BASE,
            'seeds': [0, 1],
            'overrides': [
                {'match': {'attention': 'eca'}, 'attention_kwargs': {'kernel_size': 5}},
                {'match': {'attention': 'eca', 'seed': 1}, 'recipe': {'lr': 0.1}},
            ],
        }
    )
    specs = {(s.attention, s.seed): s for s in expand(config)}
    assert specs[('eca', 0)].attention_kwargs == {'kernel_size': 5}
    assert specs[('eca', 1)].recipe.lr == 0.1 and specs[('eca', 0)].recipe.lr == 0.003
    assert specs[('none', 1)].attention_kwargs == {}


def test_yaml_errors_and_missing_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match='no such file'):
        load_config(tmp_path / 'missing.yaml')
    broken = tmp_path / 'broken.yaml'
    broken.write_text('name: [unclosed\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_config(broken)


def test_trial_ids_are_stable_and_depend_on_what_changes_results(tmp_path):
    yaml_a = tmp_path / 'a.yaml'
    yaml_a.write_text(
        textwrap.dedent("""
        name: s
        models: [cifar_resnet20_v1, cifar_resnet56_v1]
        attentions: [none, se]
        seeds: [0, 1]
        recipe: {epochs: 10, lr: 0.01}
    """)
    )
    yaml_b = tmp_path / 'b.yaml'
    yaml_b.write_text(
        textwrap.dedent("""
        recipe: {lr: 0.01, epochs: 10}
        seeds: [1, 0]
        attentions: [se, none]
        models: [cifar_resnet56_v1, cifar_resnet20_v1]
        name: s
    """)
    )
    ids_a = {s.name: trial_id(s, IDENTITY) for s in expand(load_config(yaml_a).config)}
    ids_b = {s.name: trial_id(s, IDENTITY) for s in expand(load_config(yaml_b).config)}
    assert ids_a == ids_b and len(set(ids_a.values())) == 8
    assert 'cifar_resnet20_v1-se-s1' in ids_a
    spec = expand(load_config(yaml_a).config)[0]
    assert trial_id(spec, {'digest': 'other', 'official': False}) != trial_id(spec, IDENTITY)
    changed = type(spec)(
        spec.model, spec.attention, spec.seed, Recipe(**{**spec.recipe.to_dict(), 'wd': 0.0})
    )
    assert trial_id(changed, IDENTITY) != trial_id(spec, IDENTITY)


def test_only_selects_a_subset():
    selected = parse_only('model=cifar_resnet20_v1,attention=eca,attention=se')
    assert selected == {'model': ['cifar_resnet20_v1'], 'attention': ['eca', 'se']}
    specs = expand(parse_config({**BASE, 'attentions': ['none', 'se', 'eca']}))
    assert [s.attention for s in specs if matches_only(s, selected)] == ['se', 'eca']
    with pytest.raises(ConfigError, match='key=value'):
        parse_only('eca')


def test_mixed_precision_needs_gpus_and_later_options_keep_old_ids():
    message = errors_of({**BASE, 'recipe': {'precision': 'amp_float16'}})
    assert message == (
        'my.yaml: recipe precision amp_float16 runs on GPUs only (mixed '
        'precision is refused on CPUs): set resources.gpus_per_trial, or use '
        'precision float32'
    )
    assert 'runs on GPUs only' in errors_of(
        {
            **BASE,
            'overrides': [{'match': {'attention': 'se'}, 'recipe': {'precision': 'amp_float16'}}],
        }
    )
    config = parse_config(
        {**BASE, 'recipe': {'precision': 'amp_float16'}, 'resources': {'gpus_per_trial': 0.5}}
    )
    (amp_spec,) = [s for s in expand(config) if s.attention == 'none']
    assert amp_spec.recipe.precision == 'amp_float16'
    # Added after results were first stored: at its default it stays out of the record,
    # so the id of the original recipe's trials is the one computed before it existed.
    (default_spec,) = [s for s in expand(parse_config(BASE)) if s.attention == 'none']
    assert 'precision' not in default_spec.recipe.to_dict()
    assert trial_id(default_spec, IDENTITY) == '317fc18892e7'
    assert trial_id(amp_spec, IDENTITY) != trial_id(default_spec, IDENTITY)


# Ids of the shipped sweep's cells as computed at commit 5d0e497, before network
# revisions existed (data identity IDENTITY).
IDS_BEFORE_REVISIONS = {
    'cifar_resnet20_v1-none-s0': '317fc18892e7',
    'cifar_resnet20_v1-se-s0': '7f717afdd1f1',
    'cifar_resnet20_v1-eca-s0': 'cfbbd4d79d6b',
    'cifar_resnet20_v1-gct-s0': 'a4b921178281',
    'cifar_resnet20_v2-none-s0': '68128bc50c3e',
    'cifar_resnet20_v2-se-s0': 'd26bcaffafea',
    'cifar_resnet20_v2-eca-s0': '35a19441d937',
    'cifar_resnet20_v2-gct-s0': 'f346b2183e4b',
    'cifar_resnet56_v1-none-s0': 'df453c48a475',
    'cifar_resnet56_v1-se-s0': '19893c8db969',
    'cifar_resnet56_v1-eca-s0': '97f26a551289',
    'cifar_resnet56_v1-gct-s0': 'b372b43ab58c',
    'cifar_resnet56_v2-none-s0': '176cc22f955c',
    'cifar_resnet56_v2-se-s0': '543387883771',
    'cifar_resnet56_v2-eca-s0': 'de615dc518ec',
    'cifar_resnet56_v2-gct-s0': 'a373b8f28418',
}


def test_v2_trials_of_the_old_definition_are_not_current_and_v1_ids_stay():
    from models import NETWORK_REVISIONS

    assert NETWORK_REVISIONS == {1: 1, 2: 2}
    ids = {s.name: trial_id(s, IDENTITY) for s in expand(load_config('sweep.yaml').config)}
    assert ids.keys() == IDS_BEFORE_REVISIONS.keys()
    for name, old_id in IDS_BEFORE_REVISIONS.items():
        if '_v1-' in name:
            assert ids[name] == old_id, name
        else:
            assert ids[name] != old_id, name


def test_names_counts_and_attention_options_are_checked_before_anything_runs():
    assert 'attention listed more than once: eca' in errors_of(
        {**BASE, 'attentions': ['eca', 'ECA']}
    )
    assert parse_config({**BASE, 'attentions': ['None', 'ECA']}).attentions == ['none', 'eca']
    assert (
        errors_of({**BASE, 'recipe': {'epochs': True}})
        == 'my.yaml: recipe.epochs: Input should be a valid integer (found True)'
    )
    assert (
        'overrides.0.recipe.batch_size: Input should be a valid integer (found False)'
        in errors_of({**BASE, 'overrides': [{'match': {}, 'recipe': {'batch_size': False}}]})
    )
    message = errors_of(
        {
            **BASE,
            'attentions': ['se', 'eca'],
            'overrides': [{'match': {}, 'attention_kwargs': {'reduction': 8}}],
        }
    )
    assert message == (
        'my.yaml: overrides.0.attention_kwargs: eca takes no option reduction; '
        'its options: kernel_size, gamma, b (narrow the override with '
        'match.attention)'
    )
    assert parse_config(
        {
            **BASE,
            'attentions': ['se', 'eca'],
            'overrides': [{'match': {'attention': 'se'}, 'attention_kwargs': {'reduction': 8}}],
        }
    )


def test_backend_is_a_recipe_option_in_the_id_only_when_not_gluon():
    (gluon_spec,) = [s for s in expand(parse_config(BASE)) if s.attention == 'none']
    torch_config = parse_config({**BASE, 'recipe': {'backend': 'torch'}})
    (torch_spec,) = [s for s in expand(torch_config) if s.attention == 'none']
    assert 'backend' not in gluon_spec.recipe.to_dict()
    assert trial_id(gluon_spec, IDENTITY) == '317fc18892e7'  # as before backends existed
    assert torch_spec.recipe.to_dict()['backend'] == 'torch'
    assert trial_id(torch_spec, IDENTITY) != trial_id(gluon_spec, IDENTITY)
    # Per cell, like any recipe field.
    mixed = parse_config(
        {**BASE, 'overrides': [{'match': {'attention': 'eca'}, 'recipe': {'backend': 'torch'}}]}
    )
    assert {s.attention: s.recipe.backend for s in expand(mixed)} == {
        'none': 'gluon',
        'eca': 'torch',
    }


def test_backend_options_are_checked_with_what_to_change():
    assert "recipe.backend: Input should be 'gluon' or 'torch' (found 'jax')" in errors_of(
        {**BASE, 'recipe': {'backend': 'jax'}}
    )
    assert 'amp_bfloat16 needs backend torch' in errors_of(
        {**BASE, 'recipe': {'precision': 'amp_bfloat16'}, 'resources': {'gpus_per_trial': 1}}
    )
    assert 'compile is an option of backend torch' in errors_of(
        {**BASE, 'recipe': {'compile': True}}
    )
    parse_config(
        {
            **BASE,
            'recipe': {'backend': 'torch', 'precision': 'amp_bfloat16', 'compile': True},
            'resources': {'gpus_per_trial': 0.25},
        }
    )
    message = errors_of(
        {
            **BASE,
            'seeds': [0, 1],
            'overrides': [{'match': {'seed': 1}, 'recipe': {'backend': 'torch'}}],
        }
    )
    assert (
        'overrides give the cell cifar_resnet20_v1 none two backends (seed 0: gluon, '
        'seed 1: torch)' in message
    )
    assert 'match on model and attention, not seed' in message


NONSENSE = [
    ({'recipe': {'lr': float('inf')}}, 'recipe.lr: Input should be a finite number (found inf)'),
    ({'recipe': {'wd': float('nan')}}, 'recipe.wd: Input should be a finite number (found nan)'),
    ({'recipe': {'lr_decay': float('nan')}}, 'recipe.lr_decay: Input should be a finite number'),
    ({'recipe': {'lr_decay': -1}}, 'recipe.lr_decay: Input should be greater than 0'),
    (
        {'recipe': {'momentum': -5}},
        'recipe.momentum: Input should be greater than or equal to 0 (found -5)',
    ),
    (
        {'recipe': {'lr_decay_epochs': [-5]}},
        'recipe.lr_decay_epochs.0: Input should be greater than or equal to 1 (found -5)',
    ),
    ({'recipe': {'epochs': 10**23}}, 'recipe.epochs: Input should be less than or equal to'),
    ({'recipe': {'lr': '0.1'}}, "recipe.lr: Input should be a valid number (found '0.1')"),
    (
        {'recipe': {'backend': 'torch', 'hybridize': False}},
        'recipe: hybridize is an option of backend gluon',
    ),
    ({'seeds': [-1]}, 'seeds.0: Input should be greater than or equal to 0 (found -1)'),
    ({'seeds': [2**31]}, 'seeds.0: Input should be less than or equal to 2147483647'),
    ({'seeds': ['1']}, "seeds.0: Input should be a valid integer (found '1')"),
    (
        {'resources': {'gpus_per_trial': float('inf')}},
        'resources.gpus_per_trial: Input should be a finite number (found inf)',
    ),
    (
        {'resources': {'cpus_per_trial': '2'}},
        "resources.cpus_per_trial: Input should be a valid number (found '2')",
    ),
    (
        {'attentions': ['se'], 'overrides': [{'match': {}, 'attention_kwargs': {'reduction': -1}}]},
        'overrides.0.attention_kwargs: se option reduction: expected 1 to 4096, found -1',
    ),
    (
        {
            'attentions': ['se'],
            'overrides': [{'match': {}, 'attention_kwargs': {'reduction': 'abc'}}],
        },
        "se option reduction: expected a whole number, found 'abc'",
    ),
    (
        {
            'attentions': ['eca'],
            'overrides': [{'match': {}, 'attention_kwargs': {'kernel_size': 4}}],
        },
        'eca option kernel_size: expected an odd number, found 4',
    ),
    (
        {'attentions': ['gct'], 'overrides': [{'match': {}, 'attention_kwargs': {'epsilon': -1}}]},
        'gct option epsilon: expected a number above 0, found -1',
    ),
    ({'models': ['cifar_resnet60000002_v1']}, '8 <= depth <= 1202'),
]


@pytest.mark.parametrize('change,expected', NONSENSE)
def test_every_field_has_one_rule_checked_before_anything_trains(change, expected):
    assert expected in errors_of({**BASE, **change})


def test_an_override_is_held_to_the_same_rules_as_the_recipe():
    for value, top in (
        ('0.1', "recipe.lr: Input should be a valid number (found '0.1')"),
        (float('inf'), 'recipe.lr: Input should be a finite number (found inf)'),
        (True, 'recipe.lr: Input should be a valid number (found True)'),
    ):
        assert top in errors_of({**BASE, 'recipe': {'lr': value}})
        assert f'my.yaml: overrides.0.{top}' in errors_of(
            {**BASE, 'overrides': [{'match': {'attention': 'eca'}, 'recipe': {'lr': value}}]}
        )


def test_decay_points_beyond_the_run_are_legal_and_only_those_reached_are_stated():
    from bench.trial.recipe import describe_recipe

    config = parse_config({**BASE, 'recipe': {'epochs': 1}})  # the shipped 81, 122
    assert config.recipe.lr_decay_epochs == (81, 122)
    assert (
        describe_recipe(config.recipe)
        == '1 epoch, batch 128, adam lr 0.003 no decay within 1 epoch, wd 0.0001'
    )
    assert describe_recipe(Recipe(epochs=100)).endswith('x0.1 at epoch 81, wd 0.0001')
    assert 'x0.1 at epochs 81, 122' in describe_recipe(Recipe())
    assert 'x0.1 at epoch 2' not in describe_recipe(Recipe(epochs=1, lr_decay_epochs=(2,)))


def test_a_yaml_alias_bomb_is_refused_at_once_and_quoted_in_bounded_form(tmp_path):
    import time

    lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]']
    lines += [f'a{i}: &a{i} [' + ', '.join([f'*a{i - 1}'] * 10) + ']' for i in range(1, 9)]
    lines += ['name: *a8', 'models: [cifar_resnet20_v1]', 'attentions: [none]']
    bomb = tmp_path / 'bomb.yaml'
    bomb.write_text('\n'.join(lines) + '\n')
    assert bomb.stat().st_size < 1000
    started = time.monotonic()
    with pytest.raises(ConfigError, match='more than 100,000 values once its YAML aliases'):
        load_config(bomb)
    assert time.monotonic() - started < 10
    # Below the bound, an alias in a typed key is named with a bounded quote of its value.
    small = tmp_path / 'small.yaml'
    small.write_text(
        'a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a]\n'
        'name: *b\nmodels: [cifar_resnet20_v1]\nattentions: [none]\n'
    )
    with pytest.raises(ConfigError) as error:
        load_config(small)
    (name_line,) = [line for line in str(error.value).splitlines() if ': name: ' in line]
    assert 'name: Input should be a valid string (found [[' in name_line
    assert len(name_line) - len(str(small)) < 200
    huge = tmp_path / 'huge.yaml'
    huge.write_bytes(b'#' * (2 << 20))
    with pytest.raises(ConfigError, match='is this a sweep file'):
        load_config(huge)


def test_an_empty_only_is_an_error_not_the_whole_sweep():
    for text in (',,,', ' ', 'model=', 'model=,attention=eca'):
        with pytest.raises(ConfigError, match='--only'):
            parse_only(text)
    assert parse_only('attention=ECA') == {'attention': ['eca']}


def test_an_attention_option_above_its_bound_is_a_message_not_a_crash():
    from models.registry import attention_spec

    assert attention_spec('eca').option_problems({'gamma': 2e6}) == [
        'eca option gamma: expected a number above 0 and at most 1e+06, found 2000000.0'
    ]
    assert attention_spec('GCT').option_problems({'epsilon': 5.0}) == [
        'gct option epsilon: expected a number above 0 and at most 1, found 5.0'
    ]
