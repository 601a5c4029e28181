"""Camera-frame points in the frame of the end-effector pose, as the model's heads need them."""

import torch


def in_base_frame(points: torch.Tensor, camera_to_base: torch.Tensor) -> torch.Tensor:
    """``points`` [..., 3] (camera frame) mapped by ``camera_to_base`` [4, 4], in float32."""
    # float32 whatever the model's dtype: a bf16 rotation is off by millimetres.
    transform = camera_to_base.float()
    return points.float() @ transform[:3, :3].T + transform[:3, 3]
