"""Tests of the 3D tokenizer: cleaning, FPS + kNN grouping, the group encoder, projection."""

import json

import numpy as np
import pytest
import torch

from vla_pruned_ros.camera import CameraIntrinsics
from vla_pruned_ros.tokens.points_3d import (
    PointEncoder3D,
    PointTokenizerConfig,
    TokenizationError,
    dominant_plane,
    knn_indices,
    observation_groups,
    point_colours,
    project_centres_to_patches,
    sample_groups,
)

SMALL = PointTokenizerConfig(num_points=256, num_groups=32, group_size=8, out_dim=16)


def table_scene(width: int = 40, height: int = 30) -> np.ndarray:
    """
    Back-project a synthetic depth image: a tilted table with a box on it, camera frame.

    Real depth clouds are structured like this: dense rows of pixels, density falling with
    distance, a few surfaces.
    """
    camera = CameraIntrinsics(fx=40.0, fy=40.0, cx=19.5, cy=14.5, width=width, height=height)
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    depth = 0.8 + 0.02 * v  # table plane receding upwards in the image
    depth[8:16, 15:25] -= 0.15  # box closer to the camera
    x = (u - camera.cx) * depth / camera.fx
    y = (v - camera.cy) * depth / camera.fy
    return np.stack([x, y, depth], axis=-1).reshape(-1, 3).astype(np.float32)


def pairwise_min_distance(points: np.ndarray) -> float:
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    return float(distances[~np.eye(len(points), dtype=bool)].min())


def as_set(points: np.ndarray) -> set:
    return {tuple(row) for row in np.asarray(points, dtype=np.float32).tolist()}


def distance_to_cloud(points: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest cloud point (float32 rounding-proof membership)."""
    return np.linalg.norm(points[:, None] - cloud[None], axis=-1).min(axis=1)


def test_groups_have_configured_shapes_and_dtypes():
    groups = sample_groups(table_scene(), SMALL)
    assert groups.centres.shape == (32, 3) and groups.centres.dtype == np.float32
    assert groups.neighbourhoods.shape == (32, 8, 3)
    assert groups.neighbourhoods.dtype == np.float32
    assert groups.num_valid_points == 40 * 30


def test_sampling_is_deterministic():
    cloud = table_scene()
    first = sample_groups(cloud, SMALL)
    second = sample_groups(cloud.copy(), SMALL)
    np.testing.assert_array_equal(first.centres, second.centres)
    np.testing.assert_array_equal(first.neighbourhoods, second.neighbourhoods)


def test_dense_cloud_uses_bounded_candidates_deterministically():
    rng = np.random.default_rng(3)
    cloud = rng.uniform(-1, 1, (20000, 3)).astype(np.float32)
    config = PointTokenizerConfig(
        num_points=512, num_groups=64, group_size=16, fps_candidates=2048
    )
    first = sample_groups(cloud, config)
    second = sample_groups(cloud, config)
    np.testing.assert_array_equal(first.neighbourhoods, second.neighbourhoods)
    assert as_set(first.centres) <= as_set(cloud)
    assert first.num_valid_points == 20000


def test_centres_are_cloud_points_and_better_spread_than_random():
    cloud = table_scene()
    groups = sample_groups(cloud, SMALL)
    assert as_set(groups.centres) <= as_set(cloud)
    assert len(as_set(groups.centres)) == SMALL.num_groups
    fps_spread = pairwise_min_distance(groups.centres)
    rng = np.random.default_rng(0)
    for _ in range(20):
        random_centres = cloud[rng.choice(len(cloud), SMALL.num_groups, replace=False)]
        assert fps_spread > pairwise_min_distance(random_centres)


def test_neighbourhoods_are_the_true_nearest_points():
    # Exactly num_points points: the resampled cloud is the input itself, so brute force over
    # the input is the ground truth.
    cloud = table_scene(16, 16)
    groups = sample_groups(cloud, SMALL)
    for centre, group in zip(groups.centres, groups.neighbourhoods):
        brute = np.sort(np.linalg.norm(cloud - centre, axis=1))[: SMALL.group_size]
        found = np.linalg.norm(group, axis=1)
        assert np.all(np.diff(found) >= 0), 'neighbours are ordered nearest first'
        np.testing.assert_allclose(found, brute, rtol=0, atol=1e-6)
        assert distance_to_cloud(group + centre, cloud).max() < 1e-6
    assert np.all(groups.neighbourhoods[:, 0] == 0), 'the centre is its own nearest point'


def test_knn_indices_match_brute_force_sort():
    rng = np.random.default_rng(5)
    points = rng.normal(size=(300, 3)).astype(np.float32)
    queries = rng.normal(size=(20, 3)).astype(np.float32)
    found = knn_indices(queries, points, 7)
    squared = ((queries[:, None] - points[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(found, np.argsort(squared, axis=1)[:, :7])


def test_workspace_crop_removes_outside_points():
    cloud = table_scene()
    config = PointTokenizerConfig(
        num_points=128,
        num_groups=16,
        group_size=8,
        workspace_min=(-0.2, -0.5, 0.0),
        workspace_max=(0.2, 0.5, 0.9),
    )
    in_box = (np.abs(cloud[:, 0]) <= 0.2) & (np.abs(cloud[:, 1]) <= 0.5) & (cloud[:, 2] <= 0.9)
    inside = cloud[in_box]
    assert 128 < len(inside) < len(cloud)
    groups = sample_groups(cloud, config)
    assert groups.num_valid_points == len(inside)
    assert as_set(groups.centres) <= as_set(inside)
    grouped = (groups.neighbourhoods + groups.centres[:, None]).reshape(-1, 3)
    assert distance_to_cloud(grouped, inside).max() < 1e-6
    assert distance_to_cloud(grouped, cloud[~in_box]).min() > 1e-3


def test_nan_and_inf_points_are_ignored():
    cloud = table_scene()
    dirty = cloud.copy()
    dirty[::7] = np.nan
    dirty[3::11, 2] = np.inf
    dirty[5::13, 0] = -np.inf
    clean = dirty[np.isfinite(dirty).all(axis=1)]
    groups = sample_groups(dirty, SMALL)
    expected = sample_groups(clean, SMALL)
    assert groups.num_valid_points == len(clean)
    assert np.isfinite(groups.neighbourhoods).all()
    np.testing.assert_array_equal(groups.neighbourhoods, expected.neighbourhoods)


def test_open_workspace_with_infinite_bounds_still_drops_inf():
    config = PointTokenizerConfig(
        num_points=8, num_groups=4, group_size=2,
        workspace_min=(-np.inf,) * 3, workspace_max=(np.inf,) * 3,
    )
    cloud = np.array([[0, 0, 1], [np.inf, 0, 1], [0, 1, 1], [0, 0, -np.inf]], np.float32)
    assert sample_groups(cloud, config).num_valid_points == 2


def test_fewer_points_than_groups_repeats_points():
    cloud = np.array([[0, 0, 1], [0.1, 0, 1], [0, 0.1, 1], [0.1, 0.1, 1.2], [0, 0, 2]], np.float32)
    groups = sample_groups(cloud, SMALL)
    assert groups.centres.shape == (32, 3)
    assert groups.neighbourhoods.shape == (32, 8, 3)
    assert groups.num_valid_points == 5
    # Every distinct point becomes a centre before any repeats.
    assert as_set(groups.centres[:5]) == as_set(cloud)
    assert as_set(groups.centres) == as_set(cloud)


def test_single_point_cloud_still_tokenizes():
    groups = sample_groups(np.array([[0.0, 0.0, 1.0]]), SMALL)
    assert np.all(groups.centres == [0.0, 0.0, 1.0])
    assert np.all(groups.neighbourhoods == 0.0)


@pytest.mark.parametrize(
    'cloud',
    [
        np.full((100, 3), np.nan, np.float32),
        np.zeros((0, 3), np.float32),
        np.array([[5.0, 0.0, 0.0]] * 10),  # all outside the workspace below
    ],
)
def test_no_valid_point_raises_tokenization_error(cloud):
    config = PointTokenizerConfig(
        num_points=16, num_groups=4, group_size=4, workspace_min=(-1, -1, -1),
        workspace_max=(1, 1, 1),
    )
    with pytest.raises(TokenizationError, match='no valid 3D points'):
        sample_groups(cloud, config)


def test_wrong_cloud_shape_raises_tokenization_error():
    with pytest.raises(TokenizationError, match=r'\(N, 3\)'):
        sample_groups(np.zeros((10, 4)), SMALL)


def test_voxel_size_averages_points_per_voxel():
    cloud = table_scene()
    voxel = 0.05
    config = PointTokenizerConfig(num_points=64, num_groups=16, group_size=4, voxel_size=voxel)
    occupied = np.unique(np.floor(cloud / voxel).astype(np.int64), axis=0)
    groups = sample_groups(cloud, config)
    assert groups.num_valid_points == len(occupied) < len(cloud)
    # A voxel mean lies inside its voxel.
    centre_voxels = np.floor(groups.centres / voxel).astype(np.int64)
    assert as_set(centre_voxels) <= as_set(occupied)


def test_config_validation_and_json_round_trip():
    config = PointTokenizerConfig(voxel_size=0.01, workspace_min=(-1, -1, 0), hidden_dims=[32])
    restored = PointTokenizerConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.hidden_dims == (32,)
    with pytest.raises(ValueError, match='num_groups'):
        PointTokenizerConfig(num_points=64, num_groups=128)
    with pytest.raises(ValueError, match='workspace_min'):
        PointTokenizerConfig(workspace_min=(0, 0, 2), workspace_max=(1, 1, 1))
    with pytest.raises(ValueError, match='groupsize'):
        PointTokenizerConfig.from_dict({'groupsize': 8})


def encoder_and_groups():
    torch.manual_seed(0)
    encoder = PointEncoder3D(SMALL).eval()
    groups = sample_groups(table_scene(), SMALL)
    return encoder, torch.from_numpy(groups.neighbourhoods), torch.from_numpy(groups.centres)


def test_encoder_gives_one_token_per_group():
    encoder, neighbourhoods, centres = encoder_and_groups()
    with torch.no_grad():
        tokens = encoder(neighbourhoods, centres)
        batched = encoder(neighbourhoods.expand(2, -1, -1, -1), centres.expand(2, -1, -1))
    assert tokens.shape == (32, 16)
    assert batched.shape == (2, 32, 16)
    torch.testing.assert_close(batched[1], tokens)


def test_encoding_a_subset_gives_the_same_rows():
    encoder, neighbourhoods, centres = encoder_and_groups()
    keep = torch.tensor([30, 2, 17, 5])
    with torch.no_grad():
        everything = encoder(neighbourhoods, centres)
        subset = encoder(neighbourhoods[keep], centres[keep])
        single = encoder(neighbourhoods[keep[:1]], centres[keep[:1]])
    torch.testing.assert_close(subset, everything[keep], rtol=0, atol=1e-6)
    torch.testing.assert_close(single, everything[keep[:1]], rtol=0, atol=1e-6)


def test_encoder_ignores_neighbour_order_but_sees_the_centre():
    encoder, neighbourhoods, centres = encoder_and_groups()
    shuffled = neighbourhoods[:, torch.randperm(neighbourhoods.shape[1])]
    moved = centres + torch.tensor([0.1, 0.0, 0.0])
    with torch.no_grad():
        tokens = encoder(neighbourhoods, centres)
        torch.testing.assert_close(encoder(shuffled, centres), tokens)
        assert not torch.allclose(encoder(neighbourhoods, moved), tokens)


def test_encoder_rejects_mismatched_shapes():
    encoder, neighbourhoods, centres = encoder_and_groups()
    with pytest.raises(TokenizationError):
        encoder(neighbourhoods, centres[:5])


def test_centres_project_to_hand_computed_patches():
    # 64 x 48 image, 4 x 4 grid: patches of 16 columns x 12 rows.
    camera = CameraIntrinsics(fx=100.0, fy=100.0, cx=31.5, cy=23.5, width=64, height=48)
    centres = np.array(
        [
            [0.0, 0.0, 1.0],  # (u, v) = (31.5, 23.5) -> pixel (32, 24) -> patch (2, 2)
            [-0.315, -0.235, 1.0],  # (0, 0): top-left patch
            [0.63, 0.47, 2.0],  # (63, 47): bottom-right patch
            [-0.155, 0.125, 1.0],  # (16, 36): first pixel of patch (3, 1)
            [-0.165, 0.115, 1.0],  # (15, 35): last pixel of patch (2, 0)
            [0.0, 0.0, -1.0],  # behind the camera
            [0.0, 0.0, 0.0],  # on the camera centre
            [1.0, 0.0, 1.0],  # (131.5, 23.5): right of the image
            [np.nan, 0.0, 1.0],  # not a point
        ]
    )
    patches = project_centres_to_patches(centres, camera, (4, 4))
    assert patches.tolist() == [10, 0, 15, 13, 8, -1, -1, -1, -1]


COLOUR = PointTokenizerConfig(num_points=256, num_groups=32, group_size=8, out_dim=16,
                              colour=True)
CAMERA = CameraIntrinsics(fx=40.0, fy=40.0, cx=19.5, cy=14.5, width=40, height=30)


def test_point_colours_are_the_pixels_the_points_project_into():
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[14, 19] = (255, 0, 0)
    rgb[0, 39] = (0, 0, 255)
    points = np.array([
        [-0.5 / 40, -0.4 / 40, 1.0],        # pixel (19.0, 14.1) -> row 14, column 19
        [19.9 / 40, -14.4 / 40, 1.0],       # pixel (39.4, 0.1) -> row 0, column 39
        [0.0, 0.0, -1.0],                   # behind the camera
        [5.0, 0.0, 1.0],                    # outside the image
        [np.nan, 0.0, 1.0],
    ])
    colours = point_colours(points, rgb, CAMERA)
    np.testing.assert_allclose(colours[0], [1, 0, 0])
    np.testing.assert_allclose(colours[1], [0, 0, 1])
    np.testing.assert_allclose(colours[2:], 0.5)
    # the same view at twice the resolution gives the same colours
    big = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)
    big_colours = point_colours(points[:2], big, CAMERA)
    assert (big_colours == colours[:2]).all()


def test_coloured_groups_carry_their_points_colours():
    # two separated clusters, red and blue: every neighbour keeps its own cluster's colour
    rng = np.random.default_rng(0)
    red = rng.normal([-0.3, 0.0, 1.0], 0.02, (300, 3))
    blue = rng.normal([0.3, 0.0, 1.0], 0.02, (300, 3))
    points = np.concatenate([red, blue]).astype(np.float32)
    colours = np.concatenate([np.tile([1.0, 0, 0], (300, 1)), np.tile([0, 0, 1.0], (300, 1))])
    groups = sample_groups(points, COLOUR, colours)
    assert groups.neighbourhoods.shape == (32, 8, 6)
    is_red = groups.centres[:, 0] < 0
    assert is_red.any() and (~is_red).any()
    assert (groups.neighbourhoods[is_red, :, 3:] == [1, 0, 0]).all()
    assert (groups.neighbourhoods[~is_red, :, 3:] == [0, 0, 1]).all()
    # geometry is unchanged by colour: the same groups as without it
    plain = sample_groups(points, SMALL)
    np.testing.assert_array_equal(groups.centres, plain.centres)
    np.testing.assert_array_equal(groups.neighbourhoods[..., :3], plain.neighbourhoods)


def test_colour_is_averaged_with_the_voxel_and_required_when_configured():
    config = PointTokenizerConfig(num_points=2, num_groups=2, group_size=1, out_dim=8,
                                  colour=True, voxel_size=0.1)
    points = np.array([[0.01, 0, 1], [0.02, 0, 1], [0.51, 0, 1]], np.float32)
    colours = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]], np.float32)
    groups = sample_groups(points, config, colours)
    found = {tuple(np.round(c, 3)) for c in groups.neighbourhoods[:, 0, 3:]}
    assert found == {(0.5, 0.0, 0.5), (0.0, 1.0, 0.0)}
    with pytest.raises(TokenizationError, match='uses colour'):
        sample_groups(points, config)
    with pytest.raises(TokenizationError, match='uses colour'):
        sample_groups(points, config, colours[:2])


def test_observation_groups_colour_a_depth_image_from_its_rgb():
    from vla_pruned_ros.observation import Observation

    depth = np.full((30, 40), 1.0, np.float32)
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[:, 20:] = (0, 255, 0)  # right half green
    observation = Observation(rgb=rgb, depth=depth, intrinsics=CAMERA, stamp_ns=1,
                              instruction='go', frame_id='camera')
    groups = observation_groups(observation, COLOUR)
    right = groups.centres[:, 0] > 0.02  # clear of the boundary column
    assert right.any() and (groups.neighbourhoods[right, 0, 3:] == [0, 1, 0]).all()
    assert observation_groups(observation, SMALL).neighbourhoods.shape[-1] == 3


def test_coloured_encoder_sees_colour_and_keeps_subset_exactness():
    torch.manual_seed(0)
    encoder = PointEncoder3D(COLOUR).eval()
    neighbourhoods = torch.randn(1, 5, 8, 6)
    centres = torch.randn(1, 5, 3)
    with torch.no_grad():
        tokens = encoder(neighbourhoods, centres)
        recoloured = neighbourhoods.clone()
        recoloured[..., 3:] = 0.5
        assert not torch.allclose(encoder(recoloured, centres), tokens)
        torch.testing.assert_close(encoder(neighbourhoods[:, [1, 3]], centres[:, [1, 3]]),
                                   tokens[:, [1, 3]])
    with pytest.raises(TokenizationError, match='G, k, 6'):
        encoder(neighbourhoods[..., :3], centres)


def test_dominant_plane_removal_leaves_the_objects_on_the_table():
    rng = np.random.default_rng(1)
    # a tilted table (the plane z = 0.9 + 0.3 y, as a camera sees it) and two small boxes on it
    table_xy = rng.uniform(-0.3, 0.3, (3000, 2))
    table = np.c_[table_xy, 0.9 + 0.3 * table_xy[:, 1] + rng.normal(0, 0.001, 3000)]
    boxes = np.concatenate([rng.uniform([-0.12, -0.02, 0.78], [-0.08, 0.02, 0.84], (150, 3)),
                            rng.uniform([0.10, 0.05, 0.78], [0.14, 0.09, 0.84], (150, 3))])
    cloud = np.concatenate([table, boxes]).astype(np.float32)
    on_plane = dominant_plane(cloud, 0.01)
    assert on_plane[:3000].mean() > 0.99 and not on_plane[3000:].any()
    np.testing.assert_array_equal(dominant_plane(cloud, 0.01), on_plane)  # deterministic

    config = PointTokenizerConfig(num_points=256, num_groups=32, group_size=8, out_dim=16,
                                  plane_distance=0.01)
    groups = sample_groups(cloud, config)
    assert groups.num_valid_points == 300
    assert (groups.centres[:, 2] < 0.85).all()  # every group on a box, none on the table
    # without a dominant plane (or with too few points left) nothing is removed
    directions = rng.normal(size=(500, 3))
    sphere = 0.1 * directions / np.linalg.norm(directions, axis=1, keepdims=True) + [0, 0, 1]
    assert sample_groups(sphere.astype(np.float32), config).num_valid_points == 500
    strict = PointTokenizerConfig(num_points=256, num_groups=32, group_size=8, out_dim=16,
                                  plane_distance=0.01, plane_min_fraction=0.95)
    assert sample_groups(cloud, strict).num_valid_points == len(cloud)
    with pytest.raises(ValueError, match='plane_distance'):
        PointTokenizerConfig(plane_distance=-1.0)


def test_plane_removal_can_spare_coloured_marks_on_the_table():
    rng = np.random.default_rng(2)
    table_xy = rng.uniform(-0.3, 0.3, (3000, 2))
    table = np.c_[table_xy, np.full(3000, 0.9)]
    box = rng.uniform([-0.12, -0.02, 0.84], [-0.08, 0.02, 0.89], (200, 3))
    cloud = np.concatenate([table, box]).astype(np.float32)
    colours = np.tile(np.float32([0.62, 0.60, 0.57]), (len(cloud), 1))  # a greyish table top
    mark = np.hypot(table_xy[:, 0] - 0.15, table_xy[:, 1] - 0.1) < 0.06  # a painted disc
    colours[:3000][mark] = (0.10, 0.25, 0.90)
    colours[3000:] = (0.85, 0.10, 0.10)
    base = {'num_points': 256, 'num_groups': 32, 'group_size': 8, 'out_dim': 16,
            'colour': True, 'plane_distance': 0.01}
    plain = sample_groups(cloud, PointTokenizerConfig(**base), colours)
    assert plain.num_valid_points == 200  # the mark went with the table
    spared = sample_groups(cloud, PointTokenizerConfig(**base, plane_keep_chroma=0.3), colours)
    assert spared.num_valid_points == 200 + int(mark.sum())
    on_mark = np.hypot(spared.centres[:, 0] - 0.15, spared.centres[:, 1] - 0.1) < 0.06
    assert on_mark.any() and (spared.centres[~on_mark, 2] < 0.895).all()  # mark + box only
    with pytest.raises(ValueError, match='needs colour'):
        PointTokenizerConfig(plane_distance=0.01, plane_keep_chroma=0.3)
    with pytest.raises(ValueError, match='plane_keep_chroma'):
        PointTokenizerConfig(colour=True, plane_keep_chroma=1.5)
