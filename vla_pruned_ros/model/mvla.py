"""
The reference multi-visual-modal VLA (2D patch tokens + 3D point-group tokens + text).

A transformers vision tower and a point-group encoder produce visual tokens; projectors map
them to the width of a transformers decoder (Qwen2 or Llama family), which reads
[2D, 3D, instruction, proprio, action queries] and whose final action-query states a small head
regresses into an action chunk of ``horizon`` x ``action_dim`` in one forward pass. Models
configured with ``pointers`` also locate what the instruction names among the 3D tokens
(:mod:`vla_pruned_ros.model.pointer`) and add those points to the action-query inputs and
to the head's; with ``head_branch`` a geometry branch regresses a chunk from those points too
(:mod:`vla_pruned_ros.model.geometry_branch`).

The model exposes its stages separately (encode_2d, encode_3d, embed_text, ...) because the
policy runs pruning hooks between them; :meth:`forward_dense` chains them for training.
"""

from typing import Optional

import torch
from torch import nn
from transformers import AutoModel, LlamaConfig, Qwen2Config

from vla_pruned_ros.model.config import DecoderConfig, MVLAConfig
from vla_pruned_ros.model.geometry_branch import GeometryBranch
from vla_pruned_ros.model.pointer import InstructionPointer, PointerOutput
from vla_pruned_ros.tokens.layout import (
    MODALITY_2D,
    MODALITY_3D,
    MODALITY_ACTION,
    MODALITY_PROPRIO,
    MODALITY_TEXT,
)
from vla_pruned_ros.tokens.points_3d import PointEncoder3D
from vla_pruned_ros.tokens.vision_2d import VisionTower2D


def build_decoder(config: DecoderConfig, vocab_size: int) -> nn.Module:
    """
    Build the transformers decoder stack (no LM head) from a config or a local directory.

    SDPA attention everywhere: attention probabilities are computed separately, only where a
    pruner asks for them (see :mod:`vla_pruned_ros.model.runner`).
    """
    if config.pretrained_dir:
        return AutoModel.from_pretrained(
            config.pretrained_dir, local_files_only=True, attn_implementation='sdpa'
        )
    common = {
        'vocab_size': vocab_size,
        'hidden_size': config.hidden_size,
        'num_hidden_layers': config.num_layers,
        'num_attention_heads': config.num_heads,
        'num_key_value_heads': config.num_kv_heads,
        'intermediate_size': config.intermediate_size,
        'rope_theta': config.rope_theta,
        'rms_norm_eps': config.rms_norm_eps,
        'max_position_embeddings': config.max_position_embeddings,
        'tie_word_embeddings': False,
    }
    hf_config_class = Qwen2Config if config.family == 'qwen2' else LlamaConfig
    hf_config = hf_config_class(**common)
    hf_config._attn_implementation = 'sdpa'
    return AutoModel.from_config(hf_config, attn_implementation='sdpa')


def _mlp(width_in: int, width_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(width_in, width_out), nn.GELU(), nn.Linear(width_out, width_out)
    )


def _action_head(width: int, hidden: int, action_dim: int) -> nn.Module:
    # hidden = 0: the original head; the geometry-reading head needs the second layer to turn
    # offsets into phase decisions (docs/training.md).
    if not hidden:
        return nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, action_dim))
    return nn.Sequential(
        nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
        nn.Linear(hidden, action_dim),
    )


class MultiModalVLA(nn.Module):
    """2D+3D VLA with a transformers decoder and a one-pass action-chunk regression head."""

    def __init__(self, config: MVLAConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionTower2D(config.vision)
        self.point_encoder = PointEncoder3D(config.points)
        self.decoder = build_decoder(config.decoder, config.vocab_size)
        width = self.decoder.config.hidden_size
        self.project_2d = _mlp(self.vision.hidden_size, width)
        self.project_3d = _mlp(config.points.out_dim, width)
        self.project_proprio = nn.Linear(config.proprio_dim, width) if config.proprio_dim else None
        # A learned embedding per modality tells the decoder which encoder a token came from.
        self.modality_embedding = nn.Embedding(5, width)
        self.action_queries = nn.Parameter(torch.randn(config.horizon, width) * 0.02)
        self.action_head = _action_head(width, config.head_hidden, config.action_dim)
        self.pointer = None
        if config.pointers:
            self.pointer = InstructionPointer(
                width, len(config.pointers), config.instruction_tokens,
                self.decoder.config.num_attention_heads, config.vocab_size,
                config.points.point_features, config.proprio_dim, config.camera_to_base,
                config.line_features, config.object_context,
                factored=config.pointer_score == 'factored',
                attributes=((len(config.pointer_colours), len(config.pointer_kinds))
                            if config.pointer_score == 'attribute' else None),
                sharpness=config.pointer_sharpness,
                refine_radius=config.pointer_refine_radius,
                track_radius=config.pointer_track_radius,
                track_margin=config.pointer_track_margin,
            )
        self.branch = None
        if config.head_branch:
            self.branch = GeometryBranch(
                self.pointer.head_width, width, config.head_branch, config.head_branch_summary,
                config.horizon, config.action_dim)
        self.register_buffer('action_mean', torch.tensor(config.action_mean, dtype=torch.float32))
        self.register_buffer('action_std', torch.tensor(config.action_std, dtype=torch.float32))

    @property
    def width(self) -> int:
        """Decoder hidden size."""
        return self.decoder.config.hidden_size

    @property
    def n_proprio(self) -> int:
        """1 when the model reads an end-effector pose token, else 0."""
        return 1 if self.project_proprio is not None else 0

    def _with_modality(self, tokens: torch.Tensor, code: int) -> torch.Tensor:
        return tokens + self.modality_embedding.weight[code].to(tokens.dtype)

    def encode_2d(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision-tower patch features [B, N2, vision_hidden] (before projection)."""
        return self.vision(pixel_values)

    def project_2d_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Project 2D patch features to decoder tokens [B, n, width]."""
        return self._with_modality(self.project_2d(features), MODALITY_2D)

    def encode_3d(self, neighbourhoods: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """
        Encode point groups into decoder tokens.

        ``neighbourhoods`` is [B, G, k, 3] (relative to centres) and ``centres`` [B, G, 3];
        only the groups passed are encoded, so dropping groups first saves encoder cost.
        """
        features = self.point_encoder(neighbourhoods, centres)
        return self._with_modality(self.project_3d(features), MODALITY_3D)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Instruction token embeddings [B, T, width]."""
        embeds = self.decoder.get_input_embeddings()(input_ids)
        return self._with_modality(embeds, MODALITY_TEXT)

    def embed_proprio(self, proprio: torch.Tensor) -> Optional[torch.Tensor]:
        """One token [B, 1, width] from the end-effector pose, or None without proprio."""
        if self.project_proprio is None:
            return None
        token = self.project_proprio(proprio.to(self.project_proprio.weight.dtype))
        return self._with_modality(token.unsqueeze(1), MODALITY_PROPRIO)

    def query_tokens(
        self, batch: int, pointer: Optional[PointerOutput] = None
    ) -> torch.Tensor:
        """Action query tokens [B, horizon, width], carrying the pointer's points if given."""
        queries = self._with_modality(self.action_queries, MODALITY_ACTION)
        queries = queries.unsqueeze(0).expand(batch, -1, -1)
        if pointer is not None and self.pointer is not None:
            queries = queries + self.pointer.embed(pointer).to(queries.dtype).unsqueeze(1)
        return queries

    def point(
        self, input_ids: torch.Tensor, centres: torch.Tensor, neighbourhoods: torch.Tensor,
        previous: Optional[torch.Tensor] = None,
    ) -> Optional[PointerOutput]:
        """
        Locate what the instruction names among the 3D groups (None without pointers).

        ``centres`` [B, G, 3] and ``neighbourhoods`` [B, G, k, F] are the groups whose tokens
        the decoder will read: pass exactly those, so pruning acts on the pointer as on the
        decoder. ``previous`` [B, P, 3]: the points of the episode's previous step, for a
        model that tracks (``pointer_track_radius``).
        """
        if self.pointer is None:
            return None
        return self.pointer(input_ids, centres, neighbourhoods, previous)

    def head(
        self, action_states: torch.Tensor, pointer: Optional[PointerOutput] = None,
        proprio: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Normalised action chunk [B, horizon, action_dim] from final action-query states.

        A model with pointers also reads ``pointer`` (and the pose ``proprio`` it was given)
        here (:meth:`InstructionPointer.head_features`); with a geometry branch its chunk is
        added (``head_branch_mode`` 'add') or returned alone ('only').
        """
        features = None
        if self.pointer is not None:
            if pointer is None:
                raise ValueError('this model points at what the instruction names: pass the '
                                 'pointer output to head() as well')
            features = self.pointer.head_features(pointer, proprio if self.n_proprio else None)
        if self.branch is not None:
            chunk = self.branch(features, action_states).float()
            if self.config.head_branch_mode == 'only':
                return chunk
        if features is not None:
            extra = self.pointer.to_head(features)
            action_states = action_states + extra.to(action_states.dtype).unsqueeze(1)
        actions = self.action_head(action_states).float()
        return actions + chunk if self.branch is not None else actions

    def head_parameters(self) -> list[nn.Parameter]:
        """The weights :meth:`head` adds after the decoder (what a head-only stage trains)."""
        parameters = list(self.action_head.parameters())
        if self.pointer is not None:
            parameters += list(self.pointer.to_head.parameters())
        if self.branch is not None:
            parameters += list(self.branch.parameters())
        return parameters

    def pointer_parameters(self) -> list[nn.Parameter]:
        """
        The weights that decide where the pointers point (what a pointer-only stage trains).

        Not the pointer's maps of the points into the action queries and the head: those are
        trained by the actions.
        """
        if self.pointer is None:
            return []
        feeds = {id(p) for layer in (self.pointer.to_queries, self.pointer.to_head)
                 for p in layer.parameters()}
        return [p for p in self.pointer.parameters() if id(p) not in feeds]

    def denormalize(self, actions: torch.Tensor) -> torch.Tensor:
        """Map normalised head outputs back to physical action units."""
        return actions * self.action_std + self.action_mean

    def assemble(
        self,
        tokens_2d: torch.Tensor,
        tokens_3d: torch.Tensor,
        input_ids: torch.Tensor,
        proprio: Optional[torch.Tensor],
        pointer: Optional[PointerOutput] = None,
    ) -> torch.Tensor:
        """
        Concatenate the full input sequence [B, L, width] in layout order.

        A model with pointers needs ``pointer`` (from :meth:`point` over the same 3D tokens).
        """
        batch = input_ids.shape[0]
        if self.pointer is not None and pointer is None:
            raise ValueError('this model points at what the instruction names: pass pointer='
                             'model.point(...) over the same 3D tokens')
        parts = [tokens_2d, tokens_3d, self.embed_text(input_ids)]
        proprio_token = self.embed_proprio(proprio) if proprio is not None else None
        if self.project_proprio is not None:
            if proprio_token is None:
                raise ValueError('this model reads an end-effector pose; none was given')
            parts.append(proprio_token)
        parts.append(self.query_tokens(batch, pointer))
        dtype = self.action_queries.dtype
        return torch.cat([part.to(dtype) for part in parts], dim=1)

    def forward_dense(
        self,
        pixel_values: torch.Tensor,
        neighbourhoods: torch.Tensor,
        centres: torch.Tensor,
        input_ids: torch.Tensor,
        proprio: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Unpruned batched forward (training): normalised actions [B, horizon, action_dim]."""
        tokens_2d = self.project_2d_tokens(self.encode_2d(pixel_values))
        tokens_3d = self.encode_3d(neighbourhoods, centres)
        pointer = self.point(input_ids, centres, neighbourhoods)
        embeds = self.assemble(tokens_2d, tokens_3d, input_ids, proprio, pointer)
        hidden = self.decoder(inputs_embeds=embeds).last_hidden_state
        return self.head(hidden[:, -self.config.horizon:], pointer, proprio)
