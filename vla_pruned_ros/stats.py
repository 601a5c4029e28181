"""Per-step statistics: tokens per modality and stage, latency breakdown and FLOPs."""

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StepStats:
    """What one ``Policy.step`` did and cost (mirrors the ``PruningStats`` message)."""

    pruner: str
    budget: int
    full_step: bool
    tokens_2d_in: int
    tokens_3d_in: int
    tokens_2d_kept: int
    tokens_3d_kept: int
    stages: list[tuple] = field(default_factory=list)  # (stage name, 2D kept, 3D kept)
    latency_ms: float = 0.0
    tokenize_ms: float = 0.0
    decoder_ms: float = 0.0
    pruning_overhead_ms: float = 0.0
    action_head_ms: float = 0.0
    flops_dense: float = 0.0
    flops_actual: float = 0.0
    device: str = 'cpu'
    stamp_ns: int = 0
    step_index: int = 0
    kept_2d: list[int] = field(default_factory=list)  # patch indices that reached the end
    kept_3d: list[int] = field(default_factory=list)  # group indices that reached the end
    tokens_reused: int = 0  # visual tokens whose keys/values came from an earlier step

    @property
    def tokens_in(self) -> int:
        """Visual tokens entering the step."""
        return self.tokens_2d_in + self.tokens_3d_in

    @property
    def tokens_kept(self) -> int:
        """Visual tokens that reached the last decoder layer."""
        return self.tokens_2d_kept + self.tokens_3d_kept

    @property
    def flops_ratio(self) -> float:
        """Actual over dense FLOPs (1.0 for a dense step)."""
        return self.flops_actual / self.flops_dense if self.flops_dense else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict, derived ratios included."""
        data = asdict(self)
        data['stages'] = [list(stage) for stage in self.stages]
        data['flops_ratio'] = self.flops_ratio
        return data
