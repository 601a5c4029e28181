"""Instruction-guided pointers over the 3D tokens: loss, learnability, model and policy seams."""

import math

import numpy as np
import pytest
import torch

from vla_pruned_ros.camera import look_at_pose
from vla_pruned_ros.model.config import MVLAConfig
from vla_pruned_ros.model.kv_reuse import KVReuse
from vla_pruned_ros.model.mvla import MultiModalVLA
from vla_pruned_ros.model.pointer import (
    GEOMETRY_SCALE,
    LINE_BACKOFF,
    LINE_WIDTH,
    InstructionPointer,
    PointerOutput,
    geometry_features,
    geometry_width,
    line_features,
    pointer_loss,
)
from vla_pruned_ros.model.presets import preset_config
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.tokens.points_3d import PointGroups
from vla_pruned_ros.train.trainer import warm_start


def test_pointer_loss_is_the_missing_mass_on_the_labelled_groups():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    expected = -(math.log(0.8) + math.log(0.8)) / 2
    assert pointer_loss(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    # rows without a label, or whose labelled groups were all pruned away, do not count
    unknown = torch.tensor([[float('nan')] * 3, [0.0, 0.0, 0.0]])
    both = torch.cat([labels[:1], unknown])
    assert pointer_loss(torch.cat([logits[:1], logits]), both).item() == pytest.approx(
        -math.log(0.8), rel=1e-5)
    assert pointer_loss(logits, unknown).item() == 0


def _colour_scenes(batch: int, groups: int, generator: torch.Generator):
    """
    Groups of one of six colours (RGB neighbourhoods) and instructions that name one of them.

    Word ids: 1-6 name the colours, 7-10 are filler; the named colour sits anywhere in the
    sentence and is the colour of group 0 only.
    """
    palette = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.7, 0.1], [0.1, 0.2, 0.9],
                            [0.9, 0.8, 0.1], [0.5, 0.1, 0.7], [0.1, 0.8, 0.8]])
    colour = torch.randint(6, (batch, groups), generator=generator)
    # group 0's colour is named and no other group has it: one object answers the words
    others = torch.randint(1, 6, (batch, groups), generator=generator)
    colour[:, 1:] = (colour[:, :1] + others[:, 1:]) % 6
    rgb = palette[colour][:, :, None].expand(-1, -1, 8, -1)
    xyz = 0.01 * torch.randn(batch, groups, 8, 3, generator=generator)
    neighbourhoods = torch.cat([xyz, rgb + 0.03 * torch.randn(rgb.shape, generator=generator)],
                               dim=-1)
    centres = torch.rand(batch, groups, 3, generator=generator)
    named = colour[:, 0]
    input_ids = torch.randint(7, 11, (batch, 6), generator=generator)
    slot = torch.randint(6, (batch,), generator=generator)
    input_ids[torch.arange(batch), slot] = named + 1
    labels = (colour == named[:, None]).float()
    return input_ids, centres, neighbourhoods, labels


def test_pointer_learns_to_find_what_the_words_name_and_points_at_it():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    pointer = InstructionPointer(width=32, num_pointers=1, text_length=6, num_heads=2,
                                 vocab_size=11, point_features=6)
    optimiser = torch.optim.Adam(pointer.parameters(), lr=1e-3)
    for _ in range(200):
        input_ids, centres, neighbourhoods, labels = _colour_scenes(64, 12, generator)
        loss = pointer_loss(pointer(input_ids, centres, neighbourhoods).logits[:, 0], labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    input_ids, centres, neighbourhoods, labels = _colour_scenes(256, 12, generator)
    with torch.no_grad():
        output = pointer(input_ids, centres, neighbourhoods)
    mass = (torch.softmax(output.logits[:, 0], -1) * labels).sum(-1)
    assert mass.mean() > 0.9
    # and the point is that group's centre, far nearer than the mean of all centres
    error = (output.points[:, 0] - centres[:, 0]).norm(dim=-1).median()
    assert error < 0.05 and error < (centres.mean(1) - centres[:, 0]).norm(dim=-1).median() / 5


def test_pointer_without_3d_tokens_points_at_the_origin():
    pointer = InstructionPointer(width=16, num_pointers=2, text_length=4, num_heads=2,
                                 vocab_size=20)
    ids = torch.randint(20, (3, 4))
    output = pointer(ids, torch.zeros(3, 0, 3), torch.zeros(3, 0, 8, 3))
    assert output.logits.shape == (3, 2, 0)
    assert torch.equal(output.points, torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match='exceeds'):
        pointer(torch.randint(20, (1, 5)), torch.zeros(1, 2, 3), torch.zeros(1, 2, 8, 3))


def test_pointer_names_are_checked():
    with pytest.raises(ValueError, match='pointers'):
        MVLAConfig(pointers=['gripper'])
    with pytest.raises(ValueError, match='pointers'):
        MVLAConfig(pointers=['object', 'object'])
    assert MVLAConfig.from_dict(MVLAConfig().to_dict()).pointers == []  # older models load


def _inputs(config: MVLAConfig, batch: int = 2):
    torch.manual_seed(1)
    size = config.vision.image_size
    groups = config.points.num_groups
    return (torch.randn(batch, 3, size, size),
            torch.randn(batch, groups, config.points.group_size, 3) * 0.01,
            torch.randn(batch, groups, 3),
            torch.randint(2, 100, (batch, config.instruction_tokens)),
            torch.randn(batch, 7))


def test_a_warm_started_pointer_model_computes_what_its_source_did_until_trained():
    plain_config = preset_config('tiny')
    plain_config.pointers = []
    torch.manual_seed(0)
    source = MultiModalVLA(plain_config).eval()
    model = MultiModalVLA(preset_config('tiny')).eval()
    assert model.pointer is not None and source.pointer is None
    report = warm_start(model, source)
    assert not any(name.startswith('pointer.') for name in report['copied'])
    inputs = _inputs(plain_config)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_dense(*inputs), source.forward_dense(*inputs))
        tokens_2d = model.project_2d_tokens(model.encode_2d(inputs[0]))
        tokens_3d = model.encode_3d(inputs[1], inputs[2])
        with pytest.raises(ValueError, match='pointer'):
            model.assemble(tokens_2d, tokens_3d, inputs[3], inputs[4])
        with pytest.raises(ValueError, match='head'):
            model.head(torch.zeros(2, 8, model.width))
        # once the pointer's output layers are trained, where it points reaches the actions,
        # through the decoder and straight into the head
        moved = inputs[2].clone()
        moved[0] += 0.5
        for layer in (model.pointer.to_queries, model.pointer.to_head):
            torch.nn.init.normal_(layer.weight)
            changed = model.forward_dense(inputs[0], inputs[1], moved, *inputs[3:])
            source_changed = source.forward_dense(inputs[0], inputs[1], moved, *inputs[3:])
            assert not torch.allclose(changed, source_changed)
            torch.nn.init.zeros_(layer.weight)


def test_policy_points_at_kept_and_reused_groups_but_decodes_only_the_kept():
    policy = Policy.from_preset('tiny', device='cpu')
    model = policy.model
    rng = np.random.default_rng(0)
    groups = PointGroups(centres=rng.normal(size=(32, 3)).astype(np.float32),
                         neighbourhoods=rng.normal(size=(32, 16, 3)).astype(np.float32) * 0.01,
                         num_valid_points=512)
    ids = torch.randint(2, 100, (1, 12))
    keep_3d = torch.tensor([1, 4, 9])
    n_2d = 64
    with torch.inference_mode():
        tokens, pointer, scored = policy._encode_3d(groups, keep_3d, None, n_2d, ids)
        assert tokens.shape[1] == 3 and pointer.logits.shape == (1, 2, 3)
        assert scored.tolist() == [1, 4, 9]
        reuse = KVReuse(positions=torch.tensor([3, n_2d + 2, n_2d + 20]), cache=None)
        tokens_reused, pointer_reused, scored = policy._encode_3d(groups, keep_3d, reuse, n_2d,
                                                                  ids)
    torch.testing.assert_close(tokens_reused, tokens)  # the decoder reads the kept groups
    assert pointer_reused.logits.shape == (1, 2, 5)  # kept 1, 4, 9 + reused 2, 20 (not 2D 3)
    seen = [1, 2, 4, 9, 20]
    assert scored.tolist() == seen
    direct = model.point(ids, torch.as_tensor(groups.centres[seen])[None],
                         torch.as_tensor(groups.neighbourhoods[seen])[None])
    torch.testing.assert_close(pointer_reused.logits, direct.logits)


def test_geometry_features_are_the_points_seen_from_the_end_effector():
    # a camera 1 m above the origin looking straight down the -z axis, x to the right
    camera_to_base = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1]])
    points = torch.tensor([[[0.1, 0.2, 0.9], [0.0, 0.0, 1.0]]])  # camera frame
    pose = torch.tensor([[0.1, -0.1, 0.3, 0, 0, 0, 1]])
    features = geometry_features(points, pose, camera_to_base).view(2, 9) / GEOMETRY_SCALE
    base = torch.tensor([[0.1, -0.2, 0.1], [0.0, 0.0, 0.0]])
    offset = base - pose[0, :3]
    torch.testing.assert_close(features[:, :3], base)
    torch.testing.assert_close(features[:, 3:6], offset)
    torch.testing.assert_close(features[:, 6:8], offset[:, :2].abs())
    torch.testing.assert_close(features[:, 8], offset[:, :2].norm(dim=1))
    # computed in float32 whatever the model's dtype
    half = geometry_features(points.bfloat16(), pose.bfloat16(), camera_to_base.bfloat16())
    assert half.dtype == torch.float32


def _yaw_pose(x: float, y: float, yaw: float) -> list[float]:
    return [x, y, 0.05, 0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)]


def test_line_features_are_the_push_line_seen_from_the_gripper():
    # camera 1 m above the origin looking down: camera (x, y, z) -> base (x, -y, 1 - z)
    camera_to_base = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1]])
    # object at base (0.1, 0.0), zone at base (0.1, 0.2): the push goes along +y
    points = torch.tensor([[[0.1, 0.0, 0.98], [0.1, -0.2, 1.0]]] * 2)
    # the gripper 10 cm before the object, 2 cm to the side; pads across (yaw 0) or along +y
    pose = torch.tensor([_yaw_pose(0.12, -0.1, 0.0), _yaw_pose(0.12, -0.1, math.pi / 2)])
    features = line_features(points, pose, camera_to_base)
    assert features.shape == (2, LINE_WIDTH)
    torch.testing.assert_close(features[:, :2], torch.tensor([[0.0, 1.0]] * 2))
    lengths = features[:, 2:7] / GEOMETRY_SCALE
    # length 0.2; 0.1 before the object along the line, 0.02 to its right (across = -x)
    torch.testing.assert_close(lengths[0, :3], torch.tensor([0.2, -0.1, -0.02]))
    # the start point behind the object, relative to the gripper
    torch.testing.assert_close(lengths[0, 3:], torch.tensor([-0.02, 0.1 - LINE_BACKOFF]))
    # twice the angle between line and gripper: pads facing the push (closing axis = gripper
    # y along the line, yaw 0) read (0, -1); a quarter turn off reads (0, 1)
    torch.testing.assert_close(features[:, 7:], torch.tensor([[0.0, -1.0], [0.0, 1.0]]),
                               atol=1e-6, rtol=0)
    # a half turn of the gripper is the same grasp
    flipped = line_features(points, torch.tensor([_yaw_pose(0.12, -0.1, math.pi)] * 2),
                            camera_to_base)
    torch.testing.assert_close(flipped[:, 7:], features[:1, 7:].expand(2, -1), atol=1e-6, rtol=0)


def test_the_line_features_widen_the_head_input_and_reach_the_actions():
    config = preset_config('tiny')
    config.line_features = True
    torch.manual_seed(0)
    model = MultiModalVLA(config).eval()
    pointers = len(config.pointers)
    assert model.pointer.to_head.in_features == (
        3 * pointers + config.proprio_dim + geometry_width(pointers) + LINE_WIDTH)
    # only the line features' columns are non-zero: what reaches the actions is the line
    with torch.no_grad():
        model.pointer.to_head.weight[:, -LINE_WIDTH:].normal_(std=0.1)
    states = torch.zeros(1, config.horizon, model.width)
    pose = torch.tensor([_yaw_pose(0.0, -0.1, 0.0)])

    def head(zone: list[float]) -> torch.Tensor:
        points = torch.tensor([[[0.0, 0.0, 0.5], zone]])
        with torch.no_grad():
            return model.head(states, PointerOutput(torch.zeros(1, 2, 0), points), pose)

    assert not torch.allclose(head([0.1, 0.0, 0.5]), head([0.0, 0.1, 0.5]))


def test_the_head_reads_where_the_pointed_thing_is_relative_to_the_gripper():
    config = preset_config('tiny')
    config.head_hidden = 32  # as the sim preset: two hidden layers
    assert config.camera_to_base is not None
    torch.manual_seed(0)
    model = MultiModalVLA(config).eval()
    torch.nn.init.normal_(model.pointer.to_head.weight, std=0.1)
    states = torch.zeros(1, config.horizon, model.width)
    points = torch.tensor([[[0.0, 0.0, 0.5], [0.1, 0.0, 0.5]]])
    pose = torch.tensor([[0.0, -0.1, 0.1, 0, 0, 0, 1]])
    output = PointerOutput(logits=torch.zeros(1, 2, 0), points=points)
    with torch.no_grad():
        reference = model.head(states, output, pose)
        # moving the gripper alone changes the actions through the offsets as well as the pose
        moved = pose.clone()
        moved[0, 2] += 0.05
        assert not torch.allclose(model.head(states, output, moved), reference)
        with pytest.raises(ValueError, match='pose'):
            model.pointer.head_input(output, None)
    assert model.pointer.camera_to_base is not None
    assert 'pointer.camera_to_base' not in model.state_dict()  # configuration, not a weight


@pytest.mark.parametrize('overrides, message', [
    ({'camera_to_base': [[1.0, 0, 0], [0, 1, 0], [0, 0, 1]]}, '4 x 4'),
    ({'camera_to_base': [[2.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}, 'rigid'),
    ({'camera_to_base': [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]]}, 'rigid'),
    ({'camera_to_base': [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
      'pointers': []}, 'pointers'),
    ({'camera_to_base': [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
      'proprio_dim': 0}, 'proprio_dim'),
    ({'head_hidden': -1}, 'head_hidden'),
    ({'line_features': True}, 'line_features'),
    ({'line_features': True, 'pointers': ['object', 'zone'], 'proprio_dim': 3,
      'camera_to_base': [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]},
     'line_features'),
])
def test_head_geometry_settings_are_checked(overrides, message):
    settings = {'pointers': ['object']}
    settings.update(overrides)
    with pytest.raises(ValueError, match=message):
        MVLAConfig(**settings)


def test_look_at_pose_is_a_camera_optical_frame():
    pose = look_at_pose((0.0, -1.0, 1.0), (0.0, 0.0, 0.0))
    rotation = pose[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rotation[:, 2], np.array([0.0, 1.0, -1.0]) / math.sqrt(2))
    np.testing.assert_allclose(rotation[:, 0], (1.0, 0.0, 0.0))  # no roll
    assert rotation[2, 1] < 0  # image down points down in the world
    with pytest.raises(ValueError, match='straight'):
        look_at_pose((0.0, 0.0, 1.0), (0.0, 0.0, 0.0))
