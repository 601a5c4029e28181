"""
3D visual tokens: a point cloud becomes G point groups, each encoded into one token.

The recipe is the FPS + kNN grouping of Point-BERT / PointNet++ / MLA's Point-PN:

1. drop non-finite points and crop to the workspace box (in the cloud's own frame);
2. optionally average points per voxel;
3. resample to ``num_points`` with farthest point sampling (FPS), repeating points when the
   cloud is smaller;
4. FPS picks ``num_groups`` centres among them; each centre's ``group_size`` nearest
   neighbours, relative to the centre, form its group;
5. :class:`PointEncoder3D` (shared MLP + max-pool, plus a positional MLP of the centre) gives
   one token per group.

Steps 1-4 are :func:`sample_groups` (numpy, deterministic: the same cloud always gives the
same groups). Each centre also projects into the 2D patch grid
(:func:`project_centres_to_patches`), which links 3D tokens to 2D tokens for the pruners.
"""

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import nn

from vla_pruned_ros.tokens.vision_2d import TokenizationError, patch_of_pixel

if TYPE_CHECKING:
    from vla_pruned_ros.camera import CameraIntrinsics

__all__ = [
    'PointEncoder3D',
    'PointGroups',
    'PointTokenizerConfig',
    'TokenizationError',
    'dominant_plane',
    'farthest_point_indices',
    'knn_indices',
    'observation_groups',
    'point_colours',
    'project_centres_to_patches',
    'sample_groups',
    'voxel_downsample',
]

# Default workspace bound in metres: far beyond any depth camera's range, i.e. no crop, while
# staying finite so the config survives JSON and ROS parameters.
OPEN_WORKSPACE = 1.0e4
# Seed of the subsample that bounds the FPS input; fixed so tokenization is deterministic.
CANDIDATE_SEED = 0


@dataclass
class PointTokenizerConfig:
    """
    How a point cloud is grouped and encoded into ``num_groups`` tokens.

    ``workspace_min``/``workspace_max`` bound the crop box (metres, in the frame of the cloud
    given to :func:`sample_groups`, e.g. the camera frame); the default is wide open.
    ``voxel_size`` > 0 averages the points of each voxel before sampling (0 = off).
    ``fps_candidates`` bounds the cost of the first FPS on dense clouds: a cloud with more
    points is first reduced to that many by a fixed-seed random subsample (0 = run FPS over
    every point). ``hidden_dims`` are the widths of the shared per-point MLP of
    :class:`PointEncoder3D`, ``out_dim`` the width of its tokens. ``colour`` gives every point
    the RGB (in [0, 1]) of the image pixel it projects into (:func:`point_colours`), as in the
    XYZRGB clouds of 3D VLAs: a 3D token then carries what is there as well as where.
    ``plane_distance`` > 0 removes the dominant plane (the table) before sampling: points within
    that distance (metres) of the plane :func:`dominant_plane` finds are dropped when it holds
    at least ``plane_min_fraction`` of the points, so the groups describe the objects and the
    gripper instead of the tabletop (a cloud without such a plane keeps every point).
    ``plane_keep_chroma`` > 0 (needs ``colour``) spares the plane points whose chroma (largest
    minus smallest RGB value, in [0, 1]) reaches it: coloured marks painted on the table, such
    as target zones, stay in the cloud while the grey or wooden top goes.
    """

    num_points: int = 1024
    num_groups: int = 256
    group_size: int = 32
    voxel_size: float = 0.0
    workspace_min: tuple[float, float, float] = (-OPEN_WORKSPACE,) * 3
    workspace_max: tuple[float, float, float] = (OPEN_WORKSPACE,) * 3
    fps_candidates: int = 8192
    hidden_dims: tuple[int, ...] = (64, 128)
    out_dim: int = 256
    colour: bool = False
    plane_distance: float = 0.0
    plane_min_fraction: float = 0.3
    plane_keep_chroma: float = 0.0

    @property
    def point_features(self) -> int:
        """Values per neighbour: xyz relative to the centre, then RGB when ``colour``."""
        return 6 if self.colour else 3

    def __post_init__(self) -> None:
        self.workspace_min = tuple(float(value) for value in self.workspace_min)
        self.workspace_max = tuple(float(value) for value in self.workspace_max)
        self.hidden_dims = tuple(int(value) for value in self.hidden_dims)
        if len(self.workspace_min) != 3 or len(self.workspace_max) != 3:
            raise ValueError('workspace_min and workspace_max need three values (x, y, z)')
        if any(lo > hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ValueError(
                f'workspace_min {self.workspace_min} exceeds workspace_max {self.workspace_max}'
            )
        if min(self.num_points, self.num_groups, self.group_size, self.out_dim) <= 0:
            raise ValueError('num_points, num_groups, group_size and out_dim must be positive')
        if self.num_groups > self.num_points or self.group_size > self.num_points:
            raise ValueError(
                f'num_groups ({self.num_groups}) and group_size ({self.group_size}) cannot '
                f'exceed num_points ({self.num_points})'
            )
        if self.plane_distance < 0 or not 0 < self.plane_min_fraction <= 1:
            raise ValueError('plane_distance must be >= 0 and plane_min_fraction in (0, 1]')
        if not 0 <= self.plane_keep_chroma <= 1:
            raise ValueError(f'plane_keep_chroma must lie in [0, 1], got {self.plane_keep_chroma}')
        if self.plane_keep_chroma and not self.colour:
            raise ValueError('plane_keep_chroma reads point colours: it needs colour=True')
        if self.voxel_size < 0:
            raise ValueError(f'voxel_size must be >= 0, got {self.voxel_size}')
        if self.fps_candidates and self.fps_candidates < self.num_points:
            raise ValueError(
                f'fps_candidates ({self.fps_candidates}) must be 0 or at least num_points '
                f'({self.num_points})'
            )
        if not self.hidden_dims or min(self.hidden_dims) <= 0:
            raise ValueError(f'hidden_dims must be positive widths, got {self.hidden_dims}')

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict (tuples become lists)."""
        data = asdict(self)
        for name in ('workspace_min', 'workspace_max', 'hidden_dims'):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'PointTokenizerConfig':
        """Inverse of :meth:`to_dict`; an unknown key raises ``ValueError``."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f'unknown point tokenizer config keys: {unknown}')
        return cls(**data)


@dataclass
class PointGroups:
    """
    The groups of one cloud, ready for :class:`PointEncoder3D`.

    ``centres`` (G, 3) are cloud points in the cloud's frame, in FPS order.
    ``neighbourhoods`` (G, k, F) hold each centre's k nearest points relative to that centre,
    nearest first (the centre itself, at 0, comes first); F = 3 (xyz), or 6 with the points'
    RGB after the xyz when the tokenizer uses colour (geometry is always ``[..., :3]``).
    ``num_valid_points`` counts the points left after cleaning, cropping and voxel averaging,
    before resampling; fewer than ``num_points`` means points were repeated.
    """

    centres: np.ndarray
    neighbourhoods: np.ndarray
    num_valid_points: int


def voxel_downsample(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """
    Replace the points of each cubic voxel of side ``voxel_size`` by their mean.

    Voxels are returned in a fixed order (sorted by voxel index), so the result is
    deterministic. ``points`` (N, 3 + C) must be finite; columns after xyz (colours) are
    averaged with them.
    """
    if len(points) == 0:
        return np.zeros((0, points.shape[1] if points.ndim == 2 else 3), dtype=np.float32)
    keys = np.floor(points[:, :3] / voxel_size).astype(np.int64)
    keys -= keys.min(axis=0)
    extent = keys.max(axis=0) + 1
    if float(np.prod(extent.astype(np.float64))) < 2.0**62:
        # One int64 per voxel: much faster to sort than rows of three.
        linear = (keys[:, 0] * extent[1] + keys[:, 1]) * extent[2] + keys[:, 2]
        _, inverse, counts = np.unique(linear, return_inverse=True, return_counts=True)
    else:
        _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    size = len(counts)
    sums = [np.bincount(inverse, weights=points[:, column], minlength=size)
            for column in range(points.shape[1])]
    return (np.stack(sums, axis=1) / counts[:, None]).astype(np.float32)


def farthest_point_indices(points: np.ndarray, count: int) -> np.ndarray:
    """
    Pick ``count`` indices of ``points`` (N, 3) by farthest point sampling.

    Starts at index 0, then repeatedly takes the point farthest from all picked ones (the first
    on ties), so the result is deterministic. Once every distinct point is picked, index 0
    repeats. Raises ``ValueError`` when ``count`` exceeds N.
    """
    total = len(points)
    if not 0 < count <= total:
        raise ValueError(f'cannot pick {count} of {total} points')
    # Coordinate-major arrays and in-place ufuncs: the loop runs ``count`` times, so the cost
    # per step (a few vector ops over N) must stay tiny.
    x, y, z = (np.ascontiguousarray(points[:, axis], dtype=np.float32) for axis in range(3))
    nearest = np.full(total, np.inf, dtype=np.float32)
    distance = np.empty(total, dtype=np.float32)
    delta = np.empty(total, dtype=np.float32)
    picked = np.empty(count, dtype=np.int64)
    last = 0
    for step in range(count):
        picked[step] = last
        np.subtract(x, x[last], out=delta)
        np.multiply(delta, delta, out=distance)
        np.subtract(y, y[last], out=delta)
        delta *= delta
        distance += delta
        np.subtract(z, z[last], out=delta)
        delta *= delta
        distance += delta
        np.minimum(nearest, distance, out=nearest)
        last = int(nearest.argmax())
    return picked


def knn_indices(queries: np.ndarray, points: np.ndarray, k: int) -> np.ndarray:
    """
    Return the indices (Q, k) of the ``k`` points nearest to each query, nearest first.

    Exact brute force over (Q, N) squared distances; ties keep a deterministic order.
    """
    squared = np.zeros((len(queries), len(points)), dtype=np.float32)
    # One coordinate at a time: exact differences, and faster than a (Q, N, 3) temporary.
    for axis in range(3):
        offset = queries[:, axis, None] - points[None, :, axis]
        offset *= offset
        squared += offset
    nearest = np.argpartition(squared, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(squared, nearest, axis=1), axis=1, kind='stable')
    return np.take_along_axis(nearest, order, axis=1)


def _resample(points: np.ndarray, config: PointTokenizerConfig) -> np.ndarray:
    count = len(points)
    if count <= config.num_points:
        # Too few points: keep them all and repeat them cyclically up to num_points.
        return points[np.arange(config.num_points) % count]
    if config.fps_candidates and count > config.fps_candidates:
        rng = np.random.default_rng(CANDIDATE_SEED)
        keep = np.sort(rng.choice(count, config.fps_candidates, replace=False))
        points = points[keep]
    return points[farthest_point_indices(points[:, :3], config.num_points)]


def dominant_plane(
    points: np.ndarray, distance: float, iterations: int = 64, seed: int = CANDIDATE_SEED
) -> np.ndarray:
    """
    Mask (N,) of the points within ``distance`` of the plane that holds the most of them.

    RANSAC: ``iterations`` planes through three random points (a fixed seed, so the result is
    deterministic), the one with the most inliers wins. ``points`` (N, 3) must be finite.
    """
    count = len(points)
    if count < 3:
        return np.zeros(count, dtype=bool)
    rng = np.random.default_rng(seed)
    samples = points[rng.integers(0, count, size=(iterations, 3))].astype(np.float64)
    normals = np.cross(samples[:, 1] - samples[:, 0], samples[:, 2] - samples[:, 0])
    lengths = np.linalg.norm(normals, axis=1)
    usable = lengths > 1e-12  # three collinear or repeated points make no plane
    if not usable.any():
        return np.zeros(count, dtype=bool)
    normals = normals[usable] / lengths[usable, None]
    offsets = np.einsum('ij,ij->i', normals, samples[usable, 0])
    # All candidate planes at once: one (N, planes) distance matrix instead of a Python loop.
    inliers = np.abs(points.astype(np.float64) @ normals.T - offsets) <= distance
    return inliers[:, int(inliers.sum(axis=0).argmax())]


def point_colours(
    points: np.ndarray, rgb: np.ndarray, intrinsics: 'CameraIntrinsics'
) -> np.ndarray:
    """
    RGB in [0, 1] (N, 3) of the pixel each camera-frame point (N, 3) projects into.

    The cloud must be in the optical frame of the camera ``rgb`` and ``intrinsics`` belong to
    (as for the 2D-3D links); an image of another size than the intrinsics' is taken as the
    same view resized. Points behind the camera, non-finite or outside the image get mid-grey
    0.5, so they carry no colour evidence.
    """
    points = np.asarray(points, dtype=np.float64)
    height, width = rgb.shape[:2]
    if (width, height) != (intrinsics.width, intrinsics.height):
        intrinsics = intrinsics.scaled(width, height)
    colours = np.full((len(points), 3), 0.5, dtype=np.float32)
    if len(points) == 0:
        return colours
    # Pixel centres sit at integer coordinates (as in depth_to_points): round to the nearest.
    pixels = np.floor(intrinsics.project(points) + 0.5)
    column, row = pixels[:, 0], pixels[:, 1]
    with np.errstate(invalid='ignore'):  # NaN marks points behind the camera
        inside = (column >= 0) & (column < width) & (row >= 0) & (row < height)
    colours[inside] = rgb[row[inside].astype(np.int64), column[inside].astype(np.int64), :3]
    colours[inside] /= 255.0
    return colours


def observation_groups(observation: Any, config: PointTokenizerConfig) -> PointGroups:
    """
    The point groups of an :class:`~vla_pruned_ros.observation.Observation`'s cloud.

    With ``config.colour`` the points are coloured from the observation's rgb image first.
    Raises ``TokenizationError`` like :func:`sample_groups` (or when colour needs intrinsics
    the observation lacks).
    """
    cloud = observation.cloud()
    colours = None
    if config.colour:
        if observation.intrinsics is None:
            raise TokenizationError('coloured 3D tokens need the camera intrinsics')
        colours = point_colours(cloud, observation.rgb, observation.intrinsics)
    return sample_groups(cloud, config, colours)


def sample_groups(
    points: np.ndarray, config: PointTokenizerConfig, colours: Optional[np.ndarray] = None
) -> PointGroups:
    """
    Clean, crop, resample and group a point cloud (N, 3) into ``num_groups`` groups.

    Non-finite points and points outside the workspace box are dropped; the rest is voxel
    averaged (when ``voxel_size`` > 0), resampled to ``num_points`` by FPS (repeated when
    fewer), and ``num_groups`` FPS centres with their ``group_size`` nearest neighbours form
    the groups. ``colours`` (N, 3), required when ``config.colour``, travel with their points
    and follow the xyz in the neighbourhoods. Deterministic. Raises ``TokenizationError`` when
    ``points`` is not an (N, 3) array, colours are missing or mismatched, or no valid point is
    left.
    """
    cloud = np.asarray(points)
    if cloud.ndim != 2 or cloud.shape[1] != 3:
        raise TokenizationError(f'points must be an (N, 3) array, got shape {cloud.shape}')
    if config.colour:
        if colours is None or np.shape(colours) != (len(cloud), 3):
            raise TokenizationError(
                f'this tokenizer uses colour: give colours of shape ({len(cloud)}, 3), got '
                f'{None if colours is None else np.shape(colours)}'
            )
        cloud = np.concatenate([cloud.astype(np.float32, copy=False),
                                np.asarray(colours, dtype=np.float32)], axis=1)
    cloud = cloud.astype(np.float32, copy=False)
    # A finite box drops inf with the points outside it; NaN fails every comparison.
    largest = float(np.finfo(np.float32).max)
    valid = np.ones(len(cloud), dtype=bool)
    for axis, (lower, upper) in enumerate(zip(config.workspace_min, config.workspace_max)):
        column = cloud[:, axis]
        valid &= (column >= max(lower, -largest)) & (column <= min(upper, largest))
    cloud = cloud[valid]
    if len(cloud) == 0:
        raise TokenizationError(
            f'no valid 3D points: all {len(valid)} points are NaN/inf or outside the workspace '
            f'box {config.workspace_min} .. {config.workspace_max}'
        )
    if config.plane_distance > 0:
        on_plane = dominant_plane(cloud[:, :3], config.plane_distance)
        # Keep the plane when removing it would leave fewer points than the groups need.
        if config.plane_keep_chroma > 0:
            rgb = cloud[:, 3:6]
            on_plane &= rgb.max(axis=1) - rgb.min(axis=1) < config.plane_keep_chroma
        if (on_plane.mean() >= config.plane_min_fraction
                and (~on_plane).sum() >= config.num_groups):
            cloud = cloud[~on_plane]
    if config.voxel_size > 0:
        cloud = voxel_downsample(cloud, config.voxel_size)
    num_valid = len(cloud)
    cloud = _resample(cloud, config)
    xyz = np.ascontiguousarray(cloud[:, :3])
    centres = xyz[farthest_point_indices(xyz, config.num_groups)]
    neighbours = cloud[knn_indices(centres, xyz, config.group_size)]
    neighbours[..., :3] -= centres[:, None, :]
    return PointGroups(
        centres=np.ascontiguousarray(centres, dtype=np.float32),
        neighbourhoods=neighbours.astype(np.float32),
        num_valid_points=num_valid,
    )


class PointEncoder3D(nn.Module):
    """
    Point groups -> tokens: mini-PointNet over each group plus a positional MLP of its centre.

    A shared MLP (Linear, LayerNorm, GELU per hidden width) embeds every relative neighbour,
    a max-pool over the k neighbours and a Linear give the group feature, and an MLP of the
    centre xyz is added. LayerNorm (not BatchNorm) and no cross-group operation mean each group
    is encoded on its own: encoding a subset of groups gives exactly those rows of encoding
    all, so a pruner can drop groups before the encoder.
    """

    def __init__(self, config: PointTokenizerConfig) -> None:
        super().__init__()
        self.point_features = config.point_features
        widths = (self.point_features, *config.hidden_dims)
        layers = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.LayerNorm(width_out), nn.GELU()]
        self.point_mlp = nn.Sequential(*layers)
        self.group_projection = nn.Linear(widths[-1], config.out_dim)
        self.centre_mlp = nn.Sequential(
            nn.Linear(3, widths[-1]), nn.GELU(), nn.Linear(widths[-1], config.out_dim)
        )

    def forward(self, neighbourhoods: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """
        Encode groups [..., G, k, F] (relative to) centres [..., G, 3] into [..., G, out_dim].

        F is the config's ``point_features`` (3, or 6 with colour). Leading batch dimensions
        are optional. Inputs are cast to the encoder's dtype and device. Raises
        ``TokenizationError`` on mismatched shapes.
        """
        if (
            neighbourhoods.ndim < 3
            or neighbourhoods.shape[-1] != self.point_features
            or centres.shape != neighbourhoods.shape[:-2] + (3,)
        ):
            raise TokenizationError(
                f'expected neighbourhoods [..., G, k, {self.point_features}] and centres '
                f'[..., G, 3], got {list(neighbourhoods.shape)} and {list(centres.shape)}'
            )
        weight = self.group_projection.weight
        neighbourhoods = neighbourhoods.to(device=weight.device, dtype=weight.dtype)
        centres = centres.to(device=weight.device, dtype=weight.dtype)
        pooled = self.point_mlp(neighbourhoods).amax(dim=-2)
        return self.group_projection(pooled) + self.centre_mlp(centres)


def project_centres_to_patches(
    centres: np.ndarray, intrinsics: 'CameraIntrinsics', grid_hw: tuple[int, int]
) -> np.ndarray:
    """
    Return the row-major 2D patch index (int64, G) each camera-frame centre projects into.

    Centres are projected through ``intrinsics`` and mapped to the ``grid_hw`` (rows, cols)
    patch grid with :func:`patch_of_pixel`; -1 marks centres behind the camera (z <= 0),
    non-finite, or projecting outside the image.
    """
    centres = np.asarray(centres, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] != 3:
        raise TokenizationError(f'centres must be a (G, 3) array, got shape {centres.shape}')
    pixels = intrinsics.project(centres)
    return patch_of_pixel(pixels, (intrinsics.height, intrinsics.width), grid_hw)
