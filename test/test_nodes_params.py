"""
Parameter declarations, the shipped params file, model choice and the launch file.

The launch file is parsed everywhere; it is built and evaluated where ``launch_ros`` is
importable, and run with ``ros2 launch`` where the ROS 2 CLI and an installed package exist.
"""

import ast
import importlib.util
from pathlib import Path
import shutil

import pytest
import yaml

from console_scripts import read_console_scripts
from vla_pruned_ros.nodes.params import (
    LAUNCH_PARAMETERS,
    LAUNCH_REMAPS,
    ParameterError,
    check_value,
    diagnostics_parameters,
    launch_overrides,
    policy_parameters,
    resolve_model_source,
    spec_by_name,
)

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / 'launch' / 'policy.launch.py'
PARAMS_FILE = REPO / 'config' / 'policy.yaml'


def test_every_live_number_has_a_range_and_every_parameter_a_description():
    for spec in policy_parameters(64, 32) + diagnostics_parameters():
        assert spec.description.strip(), spec.name
        if type(spec.default) in (int, float) and not spec.read_only:
            assert spec.int_range or spec.float_range, f'{spec.name} would get no rqt slider'
        assert check_value(spec, spec.default) is None, spec.name
    specs = spec_by_name(policy_parameters(64, 32))
    assert specs['token_budget'].int_range == (0, 96, 1)
    assert specs['floor_3d'].int_range == (0, 32, 1)
    for name in ('model', 'preset', 'device', 'dtype'):
        assert specs[name].read_only


@pytest.mark.parametrize(
    ('name', 'value', 'problem'),
    [
        ('keep_ratio', 0.0, 'keep_ratio must be in [0.01, 1.0]'),
        ('token_budget', 97, 'token_budget must be in [0, 96]'),
        ('output_mode', 'joints', "output_mode must be one of 'twist', 'pose'"),
        ('axis_scale', [1.0] * 6, 'axis_scale must hold 7 values'),
        ('axis_limit', [1.0] * 5 + [float('nan')], 'finite'),
        ('dry_run', 'yes', 'dry_run must be a bool'),
        ('control_rate_hz', float('inf'), 'finite'),
    ],
)
def test_check_value_names_the_problem(name, value, problem):
    spec = spec_by_name(policy_parameters(64, 32))[name]
    assert problem in check_value(spec, value)


def test_shipped_params_file_matches_the_declarations():
    data = yaml.safe_load(PARAMS_FILE.read_text())
    for node, specs in (('policy_node', policy_parameters()),
                        ('diagnostics_node', diagnostics_parameters())):
        values = data[f'/**/{node}']['ros__parameters']
        declared = spec_by_name(specs)
        assert set(values) == set(declared), node
        for name, value in values.items():
            # YAML 30 would be an int where a double is declared: the node would refuse it
            assert type(value) is type(declared[name].default), name
            assert check_value(declared[name], value) is None, name


def test_model_source(tmp_path, monkeypatch):
    model = tmp_path / 'model'
    model.mkdir()
    assert resolve_model_source(str(model), '').kind == 'directory'
    preset = resolve_model_source('', 'small')
    assert (preset.kind, preset.value) == ('preset', 'small') and 'RANDOM' in preset.warning
    with pytest.raises(ParameterError, match='does not exist'):
        resolve_model_source(str(tmp_path / 'missing'), '')
    with pytest.raises(ParameterError, match='not both'):
        resolve_model_source(str(model), 'tiny')

    # no embedded default anywhere: the tiny preset, loudly
    import vla_pruned_ros.nodes.params as params

    monkeypatch.setattr(params, 'default_model_candidates', lambda: [tmp_path / 'none'])
    fallback = resolve_model_source('', '')
    assert (fallback.kind, fallback.value) == ('preset', 'tiny')
    assert 'NO TRAINED MODEL' in fallback.warning
    # an installed default model wins over the fallback
    (model / 'config.json').write_text('{}')
    monkeypatch.setattr(params, 'default_model_candidates', lambda: [model])
    assert resolve_model_source('', '') == params.ModelSource('directory', str(model))


def test_launch_overrides_are_typed_and_skip_empty_arguments():
    got = launch_overrides({'pruner': 'fastv', 'token_budget': '64', 'keep_ratio': '0.5',
                            'model': '', 'device': 'cuda'})
    assert got == {'pruner': 'fastv', 'token_budget': 64, 'keep_ratio': 0.5, 'device': 'cuda'}
    with pytest.raises(ParameterError, match='token_budget'):
        launch_overrides({'token_budget': 'many'})


def _launch_tree():
    return ast.parse(LAUNCH_FILE.read_text())


def test_launch_file_parses_and_starts_the_installed_executables():
    tree = _launch_tree()
    functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in functions
    executables = {
        kw.value.value
        for call in ast.walk(tree) if isinstance(call, ast.Call)
        for kw in call.keywords
        if kw.arg == 'executable' and isinstance(kw.value, ast.Constant)
    }
    assert executables == {'policy_node', 'diagnostics_node'}
    assert executables <= set(read_console_scripts(REPO / 'setup.cfg'))


def _load_launch_module():
    spec = importlib.util.spec_from_file_location('policy_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_description_with_launch_ros():
    pytest.importorskip('launch_ros')
    from launch.actions import DeclareLaunchArgument
    from launch.launch_context import LaunchContext

    module = _load_launch_module()
    description = module.generate_launch_description()
    declared = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    expected = {'params_file', 'use_sim_time', 'namespace', *LAUNCH_PARAMETERS, *LAUNCH_REMAPS}
    assert declared == expected

    context = LaunchContext()
    defaults = dict.fromkeys(LAUNCH_PARAMETERS, '')
    defaults.update({arg: default for arg, (_, default) in LAUNCH_REMAPS.items()})
    context.launch_configurations.update(defaults)
    context.launch_configurations.update({
        'params_file': str(PARAMS_FILE), 'use_sim_time': 'true', 'namespace': '',
        'pruner': 'fastv', 'twist_topic': '/servo_node/delta_twist_cmds',
    })
    nodes = module.launch_nodes(context)
    assert len(nodes) == 2
    # node_package / node_executable are launch_ros' public getters (Humble .. Kilted)
    assert [getattr(n, 'node_executable', None) for n in nodes] == [
        'policy_node', 'diagnostics_node']
    assert all(getattr(n, 'node_package', None) == 'vla_pruned_ros' for n in nodes)


def test_ros2_launch_starts_both_nodes(tmp_path):
    """Only where the ROS 2 CLI and this package's install are present (a colcon workspace)."""
    pytest.importorskip('launch_ros')
    if shutil.which('ros2') is None:
        pytest.skip('no ros2 command line')
    try:
        from ament_index_python.packages import get_package_prefix

        prefix = Path(get_package_prefix('vla_pruned_ros'))
    except Exception:
        pytest.skip('vla_pruned_ros is not installed in an ament prefix')
    if not (prefix / 'lib' / 'vla_pruned_ros' / 'policy_node').is_file():
        pytest.skip('the nodes are not installed for ros2 run/launch (colcon build first)')

    import signal
    import time
    import uuid

    from nodes_fixtures import Graph, read_log, start_process, stop_process, wait_for
    from vla_pruned_ros.model.checkpoint import save_model
    from vla_pruned_ros.policy import Policy

    policy = Policy.from_preset('tiny')
    save_model(policy.model, policy.tokenizer, str(tmp_path / 'tiny'))
    namespace = f'/l{uuid.uuid4().hex[:8]}'
    process = start_process(
        ['ros2', 'launch', 'vla_pruned_ros', 'policy.launch.py', f'model:={tmp_path / "tiny"}',
         f'namespace:={namespace}', 'pruner:=random'], tmp_path / 'launch.log')
    graph = Graph(namespace)
    try:
        from diagnostic_msgs.msg import DiagnosticStatus

        graph.record(DiagnosticStatus, 'policy_status')
        wait_for(lambda: graph.messages('policy_status'), 90.0, 'policy_status from launch')
        started = time.monotonic()
        wait_for(lambda: graph.node.count_publishers('/diagnostics') > 0, 30.0, '/diagnostics')
        assert time.monotonic() - started < 30.0
    finally:
        code = stop_process(process, signal.SIGINT)
        graph.close()
    assert code == 0, read_log(process)
