"""
Analytic FLOPs of every part of a step (one multiply-add = 2 FLOPs).

Counted: all matrix multiplications (linear layers, attention scores and weighted values,
patch embedding, attention probes). Not counted: norms, activations, softmax, rotary, residual
adds and gathers, which are a few percent at most and scale linearly with the token count too.
Attention is counted as dense n x n (what SDPA kernels compute), not the causal half.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

from vla_pruned_ros.model.object_context import OBJECT_CONTEXT_WIDTH, object_context_flops
from vla_pruned_ros.model.runner import AttentionProbe, LayerRunner
from vla_pruned_ros.tokens.layout import TokenLayout


def linear_flops(rows: int, width_in: int, width_out: int) -> float:
    """FLOPs of a linear layer applied to ``rows`` vectors."""
    return 2.0 * rows * width_in * width_out


@dataclass
class VisionShape:
    """Shape of a ViT/SigLIP tower."""

    patch_size: int
    hidden: int
    layers: int
    intermediate: int
    extra_tokens: int  # 1 for ViT's CLS token, 0 for SigLIP

    def flops(self, n_patches: int) -> float:
        """Patch embedding plus every encoder layer over ``n_patches`` (+ CLS)."""
        n = n_patches + self.extra_tokens
        d = self.hidden
        embed = linear_flops(n_patches, 3 * self.patch_size**2, d)
        per_layer = (
            linear_flops(n, d, 3 * d)  # q, k, v
            + 2 * 2.0 * n * n * d  # scores and weighted values
            + linear_flops(n, d, d)  # output projection
            + linear_flops(n, d, self.intermediate)
            + linear_flops(n, self.intermediate, d)
        )
        return embed + self.layers * per_layer


@dataclass
class PointShape:
    """Shape of the point-group encoder (shared point MLP + group projection + centre MLP)."""

    group_size: int
    hidden_dims: tuple
    out_dim: int

    def flops_per_group(self) -> float:
        """FLOPs to encode one group of ``group_size`` neighbours."""
        widths = (3, *self.hidden_dims)
        point_mlp = sum(
            linear_flops(self.group_size, a, b) for a, b in zip(widths[:-1], widths[1:])
        )
        last = widths[-1]
        projection = linear_flops(1, last, self.out_dim)
        centre = linear_flops(1, 3, last) + linear_flops(1, last, self.out_dim)
        return point_mlp + projection + centre


@dataclass
class DecoderShape:
    """Shape of a Qwen2/Llama decoder layer (SwiGLU MLP, grouped-query attention)."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int

    def layer_flops(self, n: int) -> float:
        """One decoder layer over ``n`` tokens."""
        d = self.hidden
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return (
            linear_flops(n, d, q_width)
            + 2 * linear_flops(n, d, kv_width)
            + 2 * 2.0 * n * n * q_width
            + linear_flops(n, q_width, d)
            + 3 * linear_flops(n, d, self.intermediate)
        )

    def probe_flops(self, query_rows: int, keys: int) -> float:
        """Attention probabilities of ``query_rows`` rows over ``keys`` keys, all heads."""
        return 2.0 * query_rows * keys * self.heads * self.head_dim


@dataclass
class PointerShape:
    """Shape of the instruction-guided pointers (:mod:`vla_pruned_ros.model.pointer`)."""

    width: int
    pointers: int
    text_length: int
    descriptor: int
    # The factored score's colour part (keys of 3 values, its own query and score).
    colour_part: bool = False
    # Points per group the object context reads (0 without it).
    context_group_size: int = 0
    # The attribute score's colour and kind classes ((0, 0) without it; then ``descriptor``
    # is unused).
    attribute_classes: tuple[int, int] = (0, 0)

    def flops(self, n_groups: int) -> float:
        """Text layer and pooling (fixed), then the group keys and scores per given group."""
        w, t, p = self.width, self.text_length, self.pointers
        text = (linear_flops(t, w, 4 * w) + 2 * 2.0 * t * t * w  # attention
                + linear_flops(t, w, 2 * w) + linear_flops(t, 2 * w, w))  # feed-forward
        points = 2.0 * p * n_groups * 3  # softmax-weighted centres
        context = (object_context_flops(n_groups, self.context_group_size)
                   if self.context_group_size else 0.0)
        if any(self.attribute_classes):
            colours, kinds = self.attribute_classes
            pooling = 2.0 * p * t * w * 2 + linear_flops(p, w, colours + kinds)
            classes = (linear_flops(n_groups, 3, w) + linear_flops(n_groups, w, colours + 1)
                       + linear_flops(n_groups, 3 + OBJECT_CONTEXT_WIDTH, w)
                       + linear_flops(n_groups, w, w)
                       + linear_flops(n_groups, w, kinds + 1))
            matches = 2.0 * p * n_groups * (colours + kinds)
            return (text + pooling + context + classes + matches + points
                    + linear_flops(1, 3 * p, w))
        pooling = 2.0 * p * t * w * 2 + linear_flops(p, w, w)
        keys = linear_flops(n_groups, self.descriptor, w) + linear_flops(n_groups, w, w)
        scores = p * (linear_flops(n_groups, 2 * w, w) + linear_flops(n_groups, w, 1))
        if self.colour_part:
            pooling += linear_flops(p, w, w)
            keys += linear_flops(n_groups, 3, w) + linear_flops(n_groups, w, w)
            scores *= 2
        return text + pooling + keys + context + scores + points + linear_flops(1, 3 * p, w)


@dataclass
class FlopsModel:
    """FLOPs of each part of the reference VLA, and of a whole step as it ran."""

    vision: VisionShape
    points: PointShape
    decoder: DecoderShape
    vision_width: int
    width: int
    horizon: int
    action_dim: int
    proprio_dim: int
    pointer: Optional[PointerShape] = None
    head_hidden: int = 0
    # Inputs of the pointer's linear map into the head (points, pose, geometry); 0 without.
    head_features: int = 0
    # Points the head maps into the end-effector pose's frame (0 without camera_to_base).
    geometry_points: int = 0
    # Points the head's line features map into that frame (0 without line_features).
    line_points: int = 0
    # The geometry branch: hidden width (0 without), summary width, and whether it replaces
    # the head (mode 'only').
    branch_hidden: int = 0
    branch_summary: int = 0
    branch_only: bool = False

    @classmethod
    def from_model(cls, model) -> 'FlopsModel':
        """Read the shapes from a built :class:`MultiModalVLA` (pretrained parts included)."""
        vision_config = model.vision.config
        decoder_config = model.decoder.config
        runner = LayerRunner(model.decoder)
        points = model.config.points
        return cls(
            vision=VisionShape(
                patch_size=vision_config.patch_size,
                hidden=vision_config.hidden_size,
                layers=vision_config.num_layers,
                intermediate=vision_config.intermediate_size,
                extra_tokens=1 if vision_config.kind == 'vit' else 0,
            ),
            points=PointShape(points.group_size, tuple(points.hidden_dims), points.out_dim),
            decoder=DecoderShape(
                hidden=decoder_config.hidden_size,
                heads=runner.num_heads,
                kv_heads=runner.num_kv_heads,
                head_dim=runner.head_dim,
                intermediate=decoder_config.intermediate_size,
                layers=runner.num_layers,
            ),
            vision_width=vision_config.hidden_size,
            width=decoder_config.hidden_size,
            horizon=model.config.horizon,
            action_dim=model.config.action_dim,
            proprio_dim=model.config.proprio_dim,
            pointer=None if model.pointer is None else PointerShape(
                width=decoder_config.hidden_size,
                pointers=len(model.config.pointers),
                text_length=model.config.instruction_tokens,
                descriptor=(0 if model.pointer.attributes else
                            model.pointer.key[0].in_features),
                colour_part=model.pointer.factored,
                context_group_size=points.group_size if model.pointer.object_context else 0,
                attribute_classes=model.pointer.attributes or (0, 0),
            ),
            head_hidden=model.config.head_hidden,
            head_features=0 if model.pointer is None else model.pointer.to_head.in_features,
            geometry_points=(len(model.config.pointers)
                             if model.pointer is not None and model.config.camera_to_base
                             else 0),
            line_points=2 if model.config.line_features else 0,
            branch_hidden=model.config.head_branch,
            branch_summary=model.config.head_branch_summary if model.config.head_branch else 0,
            branch_only=bool(model.config.head_branch) and model.config.head_branch_mode == 'only',
        )

    def vision_tower(self, n_patches: int) -> float:
        """The 2D tower over all patches (it always sees the whole image)."""
        return self.vision.flops(n_patches)

    def encoder_3d(self, n_groups: int) -> float:
        """The point-group encoder over the groups actually encoded."""
        return n_groups * self.points.flops_per_group()

    def projectors(self, n_2d: int, n_3d: int) -> float:
        """2D and 3D projectors (two-layer MLPs) and the proprio projection."""
        w = self.width
        return (
            n_2d * (linear_flops(1, self.vision_width, w) + linear_flops(1, w, w))
            + n_3d * (linear_flops(1, self.points.out_dim, w) + linear_flops(1, w, w))
            + linear_flops(1, self.proprio_dim, w)
        )

    def decoder_layers(self, tokens_per_layer: Iterable[int]) -> float:
        """All decoder layers, each at the sequence length it ran with."""
        return sum(self.decoder.layer_flops(n) for n in tokens_per_layer)

    def pointers(self, n_groups: int) -> float:
        """The pointers over the 3D groups they score (0 for a model without them)."""
        return 0.0 if self.pointer is None else self.pointer.flops(n_groups)

    def action_head(self) -> float:
        """The regression head over the action queries (and the pointer's input to it)."""
        # the pointed positions rotated into the end-effector pose's frame
        total = linear_flops(self.geometry_points, 3, 3) + linear_flops(self.line_points, 3, 3)
        total += self.geometry_branch()
        if self.branch_only:
            return total
        w, hidden = self.width, self.head_hidden
        if hidden:
            layers = (linear_flops(1, w, hidden) + linear_flops(1, hidden, hidden)
                      + linear_flops(1, hidden, self.action_dim))
        else:
            layers = linear_flops(1, w, w) + linear_flops(1, w, self.action_dim)
        extra = linear_flops(1, self.head_features, w) if self.head_features else 0.0
        return total + self.horizon * layers + extra

    def geometry_branch(self) -> float:
        """The geometry branch's MLP and its summary of the action-query states (0 without)."""
        hidden, summary = self.branch_hidden, self.branch_summary
        if not hidden:
            return 0.0
        return (linear_flops(1, self.width, summary)
                + linear_flops(1, self.head_features + summary, hidden)
                + linear_flops(1, hidden, hidden)
                + linear_flops(1, hidden, self.horizon * self.action_dim))

    def step(
        self,
        n_2d_in: int,
        n_3d_in: int,
        n_2d_projected: int,
        n_3d_encoded: int,
        tokens_per_layer: list[int],
        n_3d_pointed: Optional[int] = None,
    ) -> float:
        """
        A whole step: tower on all patches, 3D encoder and projectors on what was kept.

        The pointers score ``n_3d_pointed`` groups (default: the encoded ones).
        """
        del n_3d_in  # grouping is geometry only; encoding is what costs
        pointed = n_3d_encoded if n_3d_pointed is None else n_3d_pointed
        return (
            self.vision_tower(n_2d_in)
            + self.encoder_3d(n_3d_encoded)
            + self.projectors(n_2d_projected, n_3d_encoded)
            + self.pointers(pointed)
            + self.decoder_layers(tokens_per_layer)
            + self.action_head()
        )

    def probes(
        self, probes: Iterable[AttentionProbe], tokens_per_layer: list[int], layout: TokenLayout
    ) -> float:
        """Extra FLOPs of the attention probes a pruner asked for."""
        total = 0.0
        rows_by_kind = {
            'last_text': 1,
            'text': layout.n_text,
            'action': layout.n_action,
            'text_action': layout.n_text + layout.n_action,
        }
        for probe in probes:
            keys = tokens_per_layer[probe.layer]
            rows = rows_by_kind.get(probe.queries, keys)
            total += self.decoder.probe_flops(rows, keys)
        return total
