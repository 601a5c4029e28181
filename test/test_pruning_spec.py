"""Pruner specs (``name:key=value,...``) reach the pruner's config, or fail with a clear error."""

import pytest

from vla_pruned_ros.pruning.spec import (
    PrunerSpec,
    parse_options_by_pruner,
    parse_pruner_spec,
)


def test_values_are_read_by_the_field_type_and_reach_the_pruner():
    spec = parse_pruner_spec('info_entropy:reuse=false,k1=0.6,transition_steps=4,'
                             'attention_layer=none,entropy_3d=distance')
    assert spec.options == {'reuse': False, 'k1': 0.6, 'transition_steps': 4,
                            'attention_layer': None, 'entropy_3d': 'distance'}
    config = spec.create().config
    assert config.reuse is False and config.k1 == 0.6 and config.entropy_3d == 'distance'
    assert parse_pruner_spec('ties:tau_layers=1/2,hard_threshold=0.4').options == {
        'tau_layers': (1, 2), 'hard_threshold': 0.4}
    assert parse_pruner_spec(' fastv ') == PrunerSpec('fastv')


@pytest.mark.parametrize('text', ['tri_stage', 'info_entropy:reuse=false,k1=0.6',
                                  'ties:tau_layers=1/2,variant=hard'])
def test_label_parses_back_to_the_same_spec(text):
    spec = parse_pruner_spec(text)
    assert parse_pruner_spec(spec.label) == spec


@pytest.mark.parametrize(
    ('text', 'message'),
    [
        ('no_such', 'unknown pruner'),
        ('fastv:no_such=1', "unknown option 'no_such'; known: layer"),
        ('info_entropy:reuse=maybe', 'expected true or false'),
        ('fastv:layer=two', 'expected int'),
        ('fastv:layer', 'not key=value'),
        ('tri_stage:stage1=false,stage2=false', 'stage1 or stage2'),
        ('info_entropy:entropy_3d=colour', 'entropy_3d must be one of'),
    ],
)
def test_bad_specs_raise_value_error_naming_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_pruner_spec(text)


def test_options_by_pruner_for_the_node_parameter():
    assert parse_options_by_pruner('') == {}
    parsed = parse_options_by_pruner('info_entropy:reuse=false; tri_stage:stage3=false')
    assert parsed == {'info_entropy': {'reuse': False}, 'tri_stage': {'stage3': False}}
    with pytest.raises(ValueError, match='appears twice'):
        parse_options_by_pruner('fastv:layer=2;fastv:layer=3')
    with pytest.raises(ValueError, match='expected name:key=value'):
        parse_options_by_pruner('reuse=false')
