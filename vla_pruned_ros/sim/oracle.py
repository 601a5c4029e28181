"""
An oracle for the model's pointers: the simulator's truth in place of their scores.

:class:`OraclePointer` wraps ``model.point``: for the chosen pointers it puts all of the
probability on the 3D groups that lie on what the instruction names, as the simulator knows it
now: for the object pointer the groups within 3 cm (horizontally) of the named object's current
position and not above its top, for the zone pointer the groups inside the named zone's disc
(the labels the pointer loss trains on, :mod:`vla_pruned_ros.train.dataset`). The decoder and
the head stay the model's own, so a closed loop with the oracle measures what grounding still
costs and what the policy's control fails on its own (``tools/oracle_pointer.py``,
``tools/rollout_trace.py --oracle``). A diagnostic: it reads privileged simulator state.
"""

from typing import Any, Optional

import numpy as np
import torch

from vla_pruned_ros.model.pointer import PointerOutput
from vla_pruned_ros.train.dataset import object_groups, zone_groups


class OracleError(ValueError):
    """A pointer the model does not have, or a model without pointers."""


# Logit of a labelled group over an unlabelled one: all of the mass, numerically.
ORACLE_LOGIT = 30.0


def truth_labels(env: Any, name: str, world: np.ndarray) -> np.ndarray:
    """
    Which groups (world-frame centres [G, 3]) of ``env``'s scene lie on what ``name`` names.

    ``name`` is a pointer target: 'object' (within 3 cm of the named object horizontally and
    not above its top) or 'zone' (inside the named zone's disc; none when the task has none).
    """
    task, scene = env.task, env.scene
    if name == 'object':
        target = task.target_object
        position = scene.object_position(target.name)
        return object_groups(world, position, target.half_height) > 0
    zone = task.target_zone
    if zone is None:
        return np.zeros(len(world), bool)
    return zone_groups(world, np.eye(4), np.array([zone.x, zone.y, zone.radius])) > 0


class OraclePointer:
    """
    Wraps ``policy.model.point``: the chosen pointers' logits come from the simulator's truth.

    :meth:`install` puts it in place of the model's ``point``; :meth:`attach` the running
    :class:`vla_pruned_ros.sim.env.TabletopEnv` after every reset. Where nothing named is
    visible (no group on it) the model's own scores stand.
    """

    def __init__(self, policy: Any, pointers: list[str]) -> None:
        if policy.model.pointer is None:
            raise OracleError('the model has no pointers')
        self.point = policy.model.point
        self.names = list(policy.config.pointers)
        unknown = [name for name in pointers if name not in self.names]
        if unknown:
            raise OracleError(f'the model has no pointer {unknown}; it has {self.names}')
        self.pointers = list(pointers)
        self.env: Optional[Any] = None

    def attach(self, env: Any) -> None:
        """Read the truth from ``env`` from now on (call after every reset)."""
        self.env = env

    def install(self, policy: Any) -> 'OraclePointer':
        """Replace ``policy.model.point`` with this oracle; returns self."""
        policy.model.point = self
        return self

    def labels(self, name: str, world: np.ndarray) -> np.ndarray:
        """Which groups (world-frame centres [G, 3]) lie on what the pointer ``name`` names."""
        return truth_labels(self.env, name, world)

    def __call__(self, input_ids: torch.Tensor, centres: torch.Tensor,
                 neighbourhoods: torch.Tensor,
                 previous: Optional[torch.Tensor] = None) -> PointerOutput:
        """The model's pointer output with the oracle's logits for the chosen pointers."""
        output = self.point(input_ids, centres, neighbourhoods, previous)
        if self.env is None:
            raise OracleError('attach the running environment first (OraclePointer.attach)')
        to_world = self.env.camera_to_world()
        world = centres[0].double().cpu().numpy() @ to_world[:3, :3].T + to_world[:3, 3]
        logits = output.logits.clone()
        for name in self.pointers:
            on = self.labels(name, world)
            if on.any():  # nothing visible: the model's own scores stand
                row = torch.full_like(logits[0, 0], -ORACLE_LOGIT)
                row[torch.as_tensor(on, device=row.device)] = ORACLE_LOGIT
                logits[0, self.names.index(name)] = row
        points = torch.einsum('bpg,bgc->bpc', torch.softmax(logits, dim=-1),
                              centres.to(logits.dtype))
        return PointerOutput(logits=logits, points=points)
