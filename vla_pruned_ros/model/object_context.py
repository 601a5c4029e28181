"""
What the object around each 3D group looks like: the shape cue of the instruction pointer.

A 3D group is 16 neighbouring points, a patch of an object a few centimetres wide. Its own
extent barely tells a cube from a sphere: a probe trained to name the target's shape from the
groups' extents, leaving one colour out, was right 32 % of the time (chance: 25 %;
``tools/shape_probe.py``), so the pointer matched the colour word and guessed the shape, and
on the heldout colour / shape pairs it pointed at a same-coloured object of another shape
(docs/training.md, the shape cue).

Here each group also reads the object it lies on, taken as the given points within
:data:`OBJECT_RADIUS` (horizontally) of the group's centre and within
:data:`OBJECT_COLOUR_TOLERANCE` of its mean colour, measured in the frame of the end-effector
pose (z up, given ``camera_to_base``): how tall the points stand and how high their top is, the
spread of their footprint along its two principal axes (a block is long), the largest and the
root-mean-square horizontal radius and their ratio (a square's corners reach further than a
disc's rim), the radius of the top third against the whole (a sphere narrows towards its top,
a cube or cylinder does not), and how many points there are. With these the same probe was
right 80 %. It is a reconstruction choice of this package, not part of any paper: objects are
found by radius and colour, without a segmentation model, because the benchmark's objects are
single-coloured and apart by at least a finger's width.

The points are those of the groups the pointer is given, so pruning acts on this cue too.
"""

import torch

from vla_pruned_ros.model.frames import in_base_frame

# Points of "the same object" as a group: horizontally this close to its centre (m; a block's
# half-length is at most 4.8 cm) and this close to its mean colour (RGB in [0, 1]).
OBJECT_RADIUS = 0.05
OBJECT_COLOUR_TOLERANCE = 0.12
# Lengths in centimetres; the point count in units of this many points.
LENGTH_SCALE = 100.0
COUNT_SCALE = 50.0
OBJECT_CONTEXT_WIDTH = 10


def _masked_extreme(values: torch.Tensor, mask: torch.Tensor, largest: bool) -> torch.Tensor:
    """Max (``largest``) or min of ``values`` over the last dim where ``mask``; 0 if none."""
    fill = float('-inf') if largest else float('inf')
    masked = values.masked_fill(~mask, fill)
    extreme = masked.amax(-1) if largest else masked.amin(-1)
    return torch.where(mask.any(-1), extreme, torch.zeros_like(extreme))


def object_descriptors(
    neighbourhoods: torch.Tensor, centres: torch.Tensor, camera_to_base: torch.Tensor
) -> torch.Tensor:
    """
    Per group, the shape of the object around it: [B, G, :data:`OBJECT_CONTEXT_WIDTH`].

    ``neighbourhoods`` [B, G, k, >= 6] hold xyz relative to ``centres`` [B, G, 3] (camera
    frame) and RGB in [0, 1]; ``camera_to_base`` [4, 4] maps the camera frame into a frame
    with z up. Computed in float32 without gradients (it is an input, nothing in it is learnt).
    """
    if neighbourhoods.shape[-1] < 6:
        raise ValueError('the object context needs coloured points (RGB after xyz), got '
                         f'{neighbourhoods.shape[-1]} values per point')
    with torch.no_grad():
        batch, groups, k = neighbourhoods.shape[:3]
        points = neighbourhoods[..., :3].float() + centres.float()[:, :, None]
        points = in_base_frame(points.reshape(batch, groups * k, 3), camera_to_base)
        colours = neighbourhoods[..., 3:6].float().reshape(batch, groups * k, 3)
        group_colours = neighbourhoods[..., 3:6].float().mean(dim=2)
        group_xy = in_base_frame(centres, camera_to_base)[..., :2]
        # [B, G, N]: which of all N given points belong to each group's object
        near = torch.cdist(group_xy, points[..., :2]) < OBJECT_RADIUS
        alike = torch.cdist(group_colours, colours) < OBJECT_COLOUR_TOLERANCE
        member = near & alike
        weight = member.float()
        count = weight.sum(-1).clamp_min(1.0)
        mean_xy = weight @ points[..., :2] / count[..., None]  # [B, G, 2]
        height = points[..., 2][:, None].expand_as(weight)
        top = _masked_extreme(height, member, largest=True)
        bottom = _masked_extreme(height, member, largest=False)
        offsets = points[:, None, :, :2] - mean_xy[:, :, None]  # [B, G, N, 2]
        offsets = offsets * weight[..., None]
        covariance = torch.einsum('bgni,bgnj->bgij', offsets, offsets) / count[..., None, None]
        # eigenvalues of the symmetric 2 x 2 footprint covariance, in closed form
        half_trace = (covariance[..., 0, 0] + covariance[..., 1, 1]) / 2
        spread = torch.sqrt(((covariance[..., 0, 0] - covariance[..., 1, 1]) / 2) ** 2
                            + covariance[..., 0, 1] ** 2)
        major = (half_trace + spread).clamp_min(0).sqrt()
        minor = (half_trace - spread).clamp_min(0).sqrt()
        radius = offsets.norm(dim=-1)
        largest_radius = _masked_extreme(radius, member, largest=True)
        rms_radius = ((radius ** 2).sum(-1) / count).sqrt()
        upper = member & (height > (top - (top - bottom) / 3)[..., None])
        upper_count = upper.float().sum(-1).clamp_min(1.0)
        upper_radius = ((radius ** 2 * upper.float()).sum(-1) / upper_count).sqrt()
        safe_rms = rms_radius.clamp_min(1e-4)
        lengths = torch.stack(
            [top - bottom, top, major, minor, largest_radius, rms_radius, upper_radius], dim=-1)
        ratios = torch.stack([largest_radius / safe_rms, upper_radius / safe_rms], dim=-1)
        ratios = torch.where(rms_radius[..., None] > 1e-4, ratios, torch.zeros_like(ratios))
        return torch.cat(
            [lengths * LENGTH_SCALE, ratios, (weight.sum(-1) / COUNT_SCALE)[..., None]], dim=-1)


# Elementwise work per (group, point) pair, estimated: two distances, the masks, offsets,
# radii and the masked sums and extremes.
PAIR_FLOPS = 30.0


def object_context_flops(n_groups: int, group_size: int) -> float:
    """FLOPs of :func:`object_descriptors` over ``n_groups`` groups of ``group_size`` points."""
    points = n_groups * group_size
    # the matrix products: points and centres rotated into the base frame, then per group the
    # mean position and the footprint covariance of its object's points
    products = 2.0 * (points + n_groups) * 3 * 3 + 2.0 * n_groups * points * (2 + 4)
    return products + PAIR_FLOPS * n_groups * points
