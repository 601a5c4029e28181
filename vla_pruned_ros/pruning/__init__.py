"""
Visual-token pruners: the framework (budget, interface, registry) and every method.

Importing this package registers all built-in pruners, so ``create_pruner(name)`` finds them.
"""

from vla_pruned_ros.pruning import (  # noqa: F401  (register pruners)
    baselines,
    info_entropy,
    safe,
    ties,
    tri_stage,
    vla_pruner,
)
from vla_pruned_ros.pruning.base import (  # noqa: F401
    PRUNERS,
    Pruner,
    PrunerConfig,
    StepContext,
    StepOutcome,
    StepPlan,
    available_pruners,
    create_pruner,
    register_pruner,
)
from vla_pruned_ros.pruning.budget import Budget, BudgetError, select_top_k  # noqa: F401
