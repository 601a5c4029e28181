"""Device and precision selection: cpu, cuda or auto; fp32, bf16 or fp16. Nothing assumes CUDA."""

import torch

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def resolve_device(name: str = 'auto') -> torch.device:
    """
    'auto' picks CUDA when available, else the CPU.

    Raises ``ValueError`` for a name torch does not know, and for 'cuda' without a GPU.
    """
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {name!r} requested but CUDA is not available here')
    return device


def resolve_dtype(name: str) -> torch.dtype:
    """Map 'fp32' / 'bf16' / 'fp16' (or their torch names) to a torch dtype."""
    aliases = {'float32': 'fp32', 'bfloat16': 'bf16', 'float16': 'fp16', 'half': 'fp16'}
    key = aliases.get(name, name)
    if key not in DTYPES:
        raise ValueError(f'unknown dtype {name!r}; use one of {", ".join(DTYPES)}')
    return DTYPES[key]
