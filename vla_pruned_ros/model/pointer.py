"""
Instruction-guided pointers: which 3D tokens show the things the instruction names.

The decoder reads [2D, 3D, instruction, proprio, action queries] causally, so a 3D token never
sees the instruction and which object is meant has to be found by the action queries alone,
from a single behaviour-cloning signal per frame. Trained that way the reference policy never
learnt it (docs/training.md: it ignored the 3D tokens, and a probe showed that one label per
frame is too weak while one label per 3D token makes the step learnable in minutes).

A pointer makes that step explicit, as 3D policies such as Act3D and 3D Diffuser Actor score
scene points against the language. Each named pointer ('object', 'zone') pools the instruction
with its own learned query, after one bidirectional layer over the pointer's own word
embeddings (so 'push the red cube to the blue zone' can tell the two colours' roles apart),
scores every 3D group the decoder reads by what it looks like (centre, extent, mean colour;
with ``object_context`` also the shape of the object around it,
:mod:`vla_pruned_ros.model.object_context`) against that summary, and answers with the
softmax-weighted mean of the group centres (camera frame). With ``factored`` the score is the
sum of a colour-only part and a colour-blind part (shape and place), so that a colour / shape
pair never named in training is scored from parts trained on every colour and every shape; on
the benchmark's heldout pairs it erred about half as often as the joint score with the same
inputs (docs/training.md, the shape cue). With ``attributes`` (colour and kind class counts)
the score asks what each group is instead: one head classifies a group's colour from its mean
colour alone, another its kind (a shape, or a zone) from its extent and object context alone,
the pointer's summary names a colour and a kind, and a group scores log P(named colour) + log
P(named kind); trained on class labels from the recorder's metadata, it missed the named
object in the first frame of 6 of 120 heldout scenes (at sharpness 10), the joint score in 27
(docs/training.md, runs 39-41). The points enter the action queries' inputs and the action
head. Training supervises the scores with which groups really lie on the named thing (a label
per group).

Given the camera's pose in the frame of the end-effector pose (``camera_to_base``, the
calibration the policy was trained with), the head also reads the points in that frame and
their offsets from the end effector (:func:`geometry_features`). The phase decisions of a
manipulation task (descend when above the object, close at it, push towards the zone) are
thresholds on exactly these offsets; from camera-frame points and a base-frame pose the head
had to learn the rotation between them first, and in the benchmark it never learnt to descend
or lift (docs/training.md, the head stage).

Pruning acts on the pointer as on the decoder: it scores only the groups a pruner kept before
the decoder (and those whose keys a temporal pruner reuses), so dropping the named object's
groups moves the point elsewhere. Its cost is in the analytic FLOPs (``FlopsModel.pointers``).

Reconstruction choices, made here and measured in docs/training.md: scoring the decoder's
learned 3D tokens instead of the descriptors, or using the decoder's (tiny-at-init) word
embeddings, trained the pointer several times more slowly on the benchmark's data.
"""

from dataclasses import dataclass
import math
from typing import Optional

import torch
from torch import nn

from vla_pruned_ros.model.frames import in_base_frame
from vla_pruned_ros.model.object_context import OBJECT_CONTEXT_WIDTH, object_descriptors

# Targets a pointer may name; the training labels of each come from the recorder's metadata.
POINTER_TARGETS = ('object', 'zone')
# How a group's descriptor is matched to the instruction (InstructionPointer's ``factored``).
POINTER_SCORES = ('joint', 'factored', 'attribute')
# Floor of the attribute score's match probabilities before their log (no -inf logits).
ATTRIBUTE_FLOOR = 1e-6


@dataclass
class AttributeLogits:
    """
    The attribute score's class logits (``pointer_score='attribute'``).

    ``text_colour`` [B, P, C] and ``text_kind`` [B, P, K]: which colour and kind each pointer's
    instruction summary names. ``group_colour`` [B, G, C + 1] and ``group_kind`` [B, G, K + 1]:
    what each group is; the last class of each is 'none' (the table's marks, the gripper, no
    object).
    """

    text_colour: torch.Tensor
    text_kind: torch.Tensor
    group_colour: torch.Tensor
    group_kind: torch.Tensor


@dataclass
class PointerOutput:
    """
    Scores [B, P, G] of every given 3D token per pointer, and the points [B, P, 3].

    ``attributes`` holds the class logits the scores came from, with the attribute score.
    """

    logits: torch.Tensor
    points: torch.Tensor
    attributes: Optional[AttributeLogits] = None


# Scales that bring the group descriptors to order one: centres (a metre or less from the
# camera) x 3, the extent of a group's points in centimetres, colours centred and doubled.
CENTRE_SCALE = 3.0
EXTENT_SCALE = 100.0
COLOUR_SCALE = 2.0
# The mean colour is the last part of a group's descriptor (when the points are coloured).
COLOUR_WIDTH = 3
# Positions and offsets in the end-effector pose's frame enter the head in units of 10 cm.
GEOMETRY_SCALE = 10.0


def geometry_features(
    points: torch.Tensor, pose: torch.Tensor, camera_to_base: torch.Tensor
) -> torch.Tensor:
    """
    The pointed positions as the end effector sees them: [B, 9 * P].

    ``points`` [B, P, 3] (camera optical frame) are mapped by ``camera_to_base`` [4, 4] into
    the frame of ``pose`` [B, >= 3] (its first three values are the end-effector position).
    Per point: its position, its offset from the end effector, the absolute horizontal offset
    and the horizontal distance, all times :data:`GEOMETRY_SCALE`.
    """
    base = in_base_frame(points, camera_to_base)
    offset = base - pose[:, None, :3].float()
    horizontal = offset[..., :2]
    parts = [base, offset, horizontal.abs(), horizontal.norm(dim=-1, keepdim=True)]
    return torch.cat(parts, dim=-1).flatten(1) * GEOMETRY_SCALE


def geometry_width(num_pointers: int) -> int:
    """Length of :func:`geometry_features` for ``num_pointers`` points."""
    return 9 * num_pointers


# How far behind the first point (away from the second) the push-start point of
# :func:`line_features` lies: a push target's half-size plus the closed fingers (m).
LINE_BACKOFF = 0.05
LINE_WIDTH = 9


def _yaw(pose: torch.Tensor) -> torch.Tensor:
    """Rotation about z of ``pose`` [B, 7] (x y z qx qy qz qw), in radians."""
    qx, qy, qz, qw = pose[:, 3], pose[:, 4], pose[:, 5], pose[:, 6]
    return torch.atan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))


def line_features(
    points: torch.Tensor, pose: torch.Tensor, camera_to_base: torch.Tensor
) -> torch.Tensor:
    """
    The line from the first pointed position to the second, seen from the end effector: [B, 9].

    For a push, the object (first point) has to move along this line to the zone (second). A
    scripted pusher decides from exactly these values (``sim.expert.PushExpert``): where to
    start (behind the object, on the line), whether it is on the line, how to turn its pads.
    From the two points alone the head would have to learn a normalisation and an angle, which
    a small MLP fitted by behaviour cloning does poorly (docs/training.md). Per row, in the frame
    of ``pose`` [B, 7] (x y z qx qy qz qw), horizontal only: the unit direction (2), the length
    (1), the end effector's position along and across the line from the first point (2), the
    offset from the end effector to the point :data:`LINE_BACKOFF` behind the first point (2),
    and sin / cos of twice the angle between the line and the gripper's yaw (2; twice because a
    parallel-jaw gripper is symmetric under a half turn). Lengths x :data:`GEOMETRY_SCALE`.
    """
    base = in_base_frame(points[:, :2], camera_to_base)
    pose = pose.float()
    start, end = base[:, 0, :2], base[:, 1, :2]
    length = (end - start).norm(dim=-1, keepdim=True)
    direction = (end - start) / length.clamp_min(1e-3)
    across = torch.stack([-direction[:, 1], direction[:, 0]], dim=-1)
    relative = pose[:, :2] - start
    along = (relative * direction).sum(-1, keepdim=True)
    lateral = (relative * across).sum(-1, keepdim=True)
    behind = start - direction * LINE_BACKOFF - pose[:, :2]
    angle = 2 * (torch.atan2(direction[:, 1], direction[:, 0]) - _yaw(pose))
    lengths = torch.cat([length, along, lateral, behind], dim=-1) * GEOMETRY_SCALE
    turn = torch.stack([angle.sin(), angle.cos()], dim=-1)
    return torch.cat([direction, lengths, turn], dim=-1)


def group_descriptors(neighbourhoods: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """
    What tells named things apart, per group [..., G, 6 or 9]: centre, extent, mean colour.

    ``neighbourhoods`` [..., G, k, F] hold xyz relative to ``centres`` [..., G, 3], then RGB
    in [0, 1] when F >= 6 (coloured tokens). The extent is the per-axis standard deviation of
    the relative xyz (flat zone marks, tall cylinders and small cubes differ there).
    """
    extent = neighbourhoods[..., :3].std(dim=-2, unbiased=False)
    parts = [centres * CENTRE_SCALE, extent * EXTENT_SCALE]
    if neighbourhoods.shape[-1] >= 6:
        parts.append((neighbourhoods[..., 3:6].mean(dim=-2) - 0.5) * COLOUR_SCALE)
    return torch.cat(parts, dim=-1)


def place_points(
    logits: torch.Tensor, centres: torch.Tensor, sharpness: float = 1.0, radius: float = 0.0,
    previous: Optional[torch.Tensor] = None, track_radius: float = 0.0,
    track_margin: float = 0.0,
) -> torch.Tensor:
    """
    Each pointer's point [B, P, 3]: the ``centres`` [B, G, 3], weighted.

    The weights are softmax(sharpness x ``logits`` [B, P, G]).
    With ``radius`` > 0 only the groups within that distance of the pointer's best-scoring
    group keep their weight. The groups on one object then all place the point, at about its
    centre, while groups of another thing that partly match (the named colour on another
    shape) cannot pull it away: what a high sharpness does too, but a high sharpness also
    leaves the point on the single best group, often at the object's edge (docs/training.md,
    run 45).

    Tracking (with ``radius``): given the ``previous`` step's points [B, P, 3] and
    ``track_radius`` > 0, the group the point is placed around is the best one within
    ``track_radius`` of the previous point, unless the best group anywhere scores more than
    ``track_margin`` (logit units) above it or none lies that near. A pointer that found its
    object then stays on it while another thing scores a little higher for a step (the gripper
    passing over it, a partial view), and still leaves a thing it holds with less confidence.
    """
    scores = sharpness * logits
    if radius > 0:
        best = logits.argmax(dim=-1, keepdim=True)  # [B, P, 1]
        if previous is not None and track_radius > 0:
            best = _tracked_best(logits, centres, previous, best, track_radius, track_margin)
        best_centre = centres.gather(1, best.expand(-1, -1, 3))  # [B, P, 3]
        near = (centres.unsqueeze(1) - best_centre.unsqueeze(2)).norm(dim=-1) <= radius
        scores = scores.masked_fill(~near, float('-inf'))
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum('bpg,bgc->bpc', weights, centres)


def _tracked_best(
    logits: torch.Tensor, centres: torch.Tensor, previous: torch.Tensor, best: torch.Tensor,
    track_radius: float, track_margin: float,
) -> torch.Tensor:
    """Index [B, P, 1] of the group to place around, with tracking (see place_points)."""
    distance = (centres.unsqueeze(1) - previous.to(centres.dtype).unsqueeze(2)).norm(dim=-1)
    local = logits.masked_fill(distance > track_radius, float('-inf'))
    local_score, local_best = local.max(dim=-1, keepdim=True)
    global_score = logits.gather(-1, best)
    stay = torch.isfinite(local_score) & (global_score - local_score <= track_margin)
    return torch.where(stay, local_best, best)


class InstructionPointer(nn.Module):
    """Score 3D groups against the instruction, one learned text query per pointer."""

    def __init__(
        self, width: int, num_pointers: int, text_length: int, num_heads: int, vocab_size: int,
        point_features: int = 3, proprio_dim: int = 0,
        camera_to_base: Optional['list[list[float]]'] = None, line: bool = False,
        object_context: bool = False, factored: bool = False,
        attributes: Optional[tuple[int, int]] = None, sharpness: float = 1.0,
        refine_radius: float = 0.0, track_radius: float = 0.0, track_margin: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_pointers = num_pointers
        if camera_to_base is not None and proprio_dim < 3:
            raise ValueError('geometry features (camera_to_base) need the end-effector position '
                             f'in the pose input, got proprio_dim={proprio_dim}')
        if line and (camera_to_base is None or proprio_dim < 7 or num_pointers < 2):
            raise ValueError('line features need camera_to_base, two pointers and the full pose '
                             f'(proprio_dim >= 7), got {num_pointers} pointers, '
                             f'proprio_dim={proprio_dim}')
        if object_context and (camera_to_base is None or point_features < 6):
            raise ValueError('the object context needs camera_to_base (which way is up) and '
                             f'coloured points, got point_features={point_features}')
        if factored and point_features < 6:
            raise ValueError('a factored score has a colour part: it needs coloured points, got '
                             f'point_features={point_features}')
        if attributes is not None and (factored or not object_context or min(attributes) < 1):
            raise ValueError('the attribute score needs the object context, is not factored and '
                             f'needs at least one colour and one kind, got {attributes}')
        self.line = line
        self.attributes = attributes
        # Sharpens where the attribute score places its points (MVLAConfig.pointer_sharpness).
        self.sharpness = float(sharpness)
        # Only the groups this near the best-scoring one place a point (MVLAConfig), metres.
        self.refine_radius = float(refine_radius)
        # Stay near the last step's point unless elsewhere scores that much more (place_points).
        self.track_radius, self.track_margin = float(track_radius), float(track_margin)
        self.object_context = object_context
        self.factored = factored
        # Part of the configuration, not a weight: not saved in the state dict.
        self.register_buffer(
            'camera_to_base',
            None if camera_to_base is None else torch.tensor(camera_to_base, dtype=torch.float32),
            persistent=False,
        )
        # Its own word embeddings (unit scale, not the decoder's small ones): the pointer learns
        # what colour and shape words mean without pulling on the decoder's inputs.
        self.words = nn.Embedding(vocab_size, width)
        self.text_position = nn.Parameter(torch.zeros(text_length, width))
        self.text_layer = nn.TransformerEncoderLayer(
            width, num_heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True,
            norm_first=True,
        )
        self.pool_queries = nn.Parameter(torch.randn(num_pointers, width) * 0.02)
        if attributes is None:
            self.query = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))
            descriptor = 9 if point_features >= 6 else 6
            if object_context:
                descriptor += OBJECT_CONTEXT_WIDTH
            if factored:
                descriptor -= COLOUR_WIDTH
            self.key = nn.Sequential(
                nn.Linear(descriptor, width), nn.GELU(), nn.Linear(width, width))
            # The score reads the group and its product with the text summary: a match of
            # colour AND shape is a conjunction, which one bilinear form cannot express.
            self.score = nn.Sequential(
                nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, 1))
            if factored:
                # A conjunction learnt from the pairs shown carries over poorly to pairs never
                # shown: the factored score adds a colour-only part to a colour-blind one.
                self.colour_query = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))
                self.colour_key = nn.Sequential(
                    nn.Linear(COLOUR_WIDTH, width), nn.GELU(), nn.Linear(width, width))
                self.colour_score = nn.Sequential(
                    nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, 1))
        else:
            # What a group is, told by parts that never see each other's input: its colour
            # from its mean colour alone, its kind (a shape, or a flat zone) from its extent
            # and object context alone. A pair training never named is then the product of a
            # colour and a kind that training named with other partners.
            colours, kinds = attributes
            self.text_attributes = nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, colours + kinds))
            self.group_colour = nn.Sequential(
                nn.Linear(COLOUR_WIDTH, width), nn.GELU(), nn.Linear(width, colours + 1))
            self.group_kind = nn.Sequential(
                nn.Linear(3 + OBJECT_CONTEXT_WIDTH, width), nn.GELU(), nn.Linear(width, width),
                nn.GELU(), nn.Linear(width, kinds + 1))
        self.scale = 1.0 / math.sqrt(width)
        # The points reach the actions twice: through the decoder (added to the action-query
        # inputs) and straight into the action head together with the pose, where moving
        # towards a point is one linear map of (point, pose) away; through the decoder alone
        # a warm-started policy took thousands of steps to start using them.
        # Zero: a model warm-started from one without pointers computes what it computed.
        self.to_queries = nn.Linear(3 * num_pointers, width)
        head_features = 3 * num_pointers + proprio_dim
        if camera_to_base is not None:
            head_features += geometry_width(num_pointers)
        if line:
            head_features += LINE_WIDTH
        self.to_head = nn.Linear(head_features, width)
        for layer in (self.to_queries, self.to_head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, input_ids: torch.Tensor, centres: torch.Tensor, neighbourhoods: torch.Tensor,
        previous: Optional[torch.Tensor] = None,
    ) -> PointerOutput:
        """
        Point into ``centres`` [B, G, 3] by scoring the groups.

        A group is read as :func:`group_descriptors` of its ``neighbourhoods`` [B, G, k, F];
        ``input_ids`` [B, T] is the instruction (T at most the configured text length). With no
        group (G = 0) every point is the origin. ``previous`` [B, P, 3], the points of the
        episode's previous step, lets the placement track (:func:`place_points`).
        """
        length = input_ids.shape[1]
        if length > self.text_position.shape[0]:
            raise ValueError(f"instruction of {length} tokens exceeds the pointer's "
                             f'{self.text_position.shape[0]}')
        dtype = self.to_queries.weight.dtype
        text = self.text_layer(self.words(input_ids).to(dtype) + self.text_position[:length])
        attention = torch.softmax(
            torch.einsum('pw,btw->bpt', self.pool_queries, text) * self.scale, dim=-1)
        pooled = torch.einsum('bpt,btw->bpw', attention, text)
        batch, groups = centres.shape[:2]
        if groups == 0:
            return PointerOutput(logits=pooled.new_zeros(batch, self.num_pointers, 0),
                                 points=pooled.new_zeros(batch, self.num_pointers, 3))
        descriptors = group_descriptors(neighbourhoods.to(dtype), centres.to(dtype))
        context = (object_descriptors(neighbourhoods, centres, self.camera_to_base).to(dtype)
                   if self.object_context else None)
        if self.attributes is not None:
            return self._attribute_output(pooled, descriptors, context, centres, previous)
        colours = descriptors[..., 6:]
        if self.factored:
            descriptors = descriptors[..., :6]
        if context is not None:
            descriptors = torch.cat([descriptors, context], dim=-1)
        logits = _match(self.score, self.key(descriptors), self.query(pooled))
        if self.factored:
            logits = logits + _match(
                self.colour_score, self.colour_key(colours), self.colour_query(pooled))
        points = self._place(logits, centres.to(dtype), 1.0, previous)
        return PointerOutput(logits=logits, points=points)

    def _place(
        self, logits: torch.Tensor, centres: torch.Tensor, sharpness: float,
        previous: Optional[torch.Tensor],
    ) -> torch.Tensor:
        return place_points(logits, centres, sharpness, self.refine_radius, previous,
                            self.track_radius, self.track_margin)

    def _attribute_output(
        self, pooled: torch.Tensor, descriptors: torch.Tensor, context: torch.Tensor,
        centres: torch.Tensor, previous: Optional[torch.Tensor] = None,
    ) -> PointerOutput:
        """
        The attribute score: log P(named colour) + log P(named kind) per group and pointer.

        Each probability is the match of the instruction's class distribution with the
        group's, e.g. sum over colours c of P(pointer names c) * P(group has colour c). The
        points are the group centres weighted by the softmax of the logits times the sharpness
        (the product raised to that power); the logits themselves, which the pointer loss and
        the pruners read, do not depend on it.
        """
        colours, kinds = self.attributes
        text = self.text_attributes(pooled)
        text_colour, text_kind = text[..., :colours], text[..., colours:]
        group_colour = self.group_colour(descriptors[..., 6:9])
        group_kind = self.group_kind(torch.cat([descriptors[..., 3:6], context], dim=-1))
        colour_match = torch.einsum('bpc,bgc->bpg', torch.softmax(text_colour, dim=-1),
                                    torch.softmax(group_colour, dim=-1)[..., :colours])
        kind_match = torch.einsum('bpk,bgk->bpg', torch.softmax(text_kind, dim=-1),
                                  torch.softmax(group_kind, dim=-1)[..., :kinds])
        logits = (colour_match.clamp_min(ATTRIBUTE_FLOOR).log()
                  + kind_match.clamp_min(ATTRIBUTE_FLOOR).log())
        points = self._place(logits, centres.to(logits.dtype), self.sharpness, previous)
        return PointerOutput(logits=logits, points=points, attributes=AttributeLogits(
            text_colour, text_kind, group_colour, group_kind))

    def embed(self, output: PointerOutput) -> torch.Tensor:
        """What the action queries receive: [B, width] from the points."""
        return self.to_queries(output.points.flatten(1).to(self.to_queries.weight.dtype))

    def head_features(
        self, output: PointerOutput, proprio: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """
        What the head reads from the points and the pose: [B, head_width].

        The points and the pose, and with ``camera_to_base`` their :func:`geometry_features`
        (which need the pose), then with ``line`` the :func:`line_features` of the first two
        points.
        """
        parts = [output.points.flatten(1)]
        if proprio is not None:
            parts.append(proprio)
        if self.camera_to_base is not None:
            if proprio is None:
                raise ValueError('this pointer reads offsets from the end effector: pass the pose')
            parts.append(geometry_features(output.points, proprio, self.camera_to_base))
        if self.line:
            parts.append(line_features(output.points, proprio, self.camera_to_base))
        features = torch.cat(parts, dim=1).to(self.to_head.weight.dtype)
        if features.shape[1] != self.to_head.in_features:
            raise ValueError(f'the pointer head reads {self.to_head.in_features} values '
                             f'(points and pose), got {features.shape[1]}')
        return features

    @property
    def head_width(self) -> int:
        """Length of :meth:`head_features`."""
        return self.to_head.in_features

    def head_input(
        self, output: PointerOutput, proprio: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """What the action head adds to every final action-query state: [B, width]."""
        return self.to_head(self.head_features(output, proprio))


def _match(score: nn.Module, keys: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
    """Logits [B, P, G] of ``keys`` [B, G, width] against every pointer's ``summary`` [B, P, w]."""
    summary = summary.unsqueeze(2).expand(-1, -1, keys.shape[1], -1)  # [B, P, G, width]
    keys = keys.unsqueeze(1).expand_as(summary)
    return score(torch.cat([keys, keys * summary], dim=-1)).squeeze(-1)


def pointer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """
    Negative log of the probability mass a pointer puts on the labelled groups.

    ``logits`` and ``labels`` are [B, G] (labels 1/0, NaN rows where unknown); rows without a
    known label or without any positive group (the thing was pruned away or is out of view) do
    not count. Zero (with a gradient path) when no row counts.
    """
    known = torch.isfinite(labels).all(dim=1) & (torch.nan_to_num(labels).sum(dim=1) > 0)
    if not known.any():
        return logits.sum() * 0.0
    log_probs = torch.log_softmax(logits[known].float(), dim=-1)
    on_target = log_probs.masked_fill(labels[known] <= 0, float('-inf'))
    return -torch.logsumexp(on_target, dim=-1).mean()


def attribute_loss(
    attributes: AttributeLogits, named: torch.Tensor, group_colour: torch.Tensor,
    group_kind: torch.Tensor,
) -> torch.Tensor:
    """
    Cross-entropy of the attribute score's classes against what the scene really holds.

    ``named`` [B, P, 2] holds per pointer the class indices of the colour and the kind its
    instruction names; ``group_colour`` and ``group_kind`` [B, G] those of what each group lies
    on (the last class: none). -1 marks unknown labels, which do not count. The sum of the
    four mean cross-entropies (text colour, text kind, group colour, group kind); zero (with a
    gradient path) where none is known.
    """
    pairs = (
        (attributes.text_colour, named[..., 0]), (attributes.text_kind, named[..., 1]),
        (attributes.group_colour, group_colour), (attributes.group_kind, group_kind),
    )
    total = attributes.text_colour.sum() * 0.0
    for logits, labels in pairs:
        labels = labels.to(logits.device).long()
        if (labels >= 0).any():
            total = total + nn.functional.cross_entropy(
                logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-1)
    return total
