"""minfer: dynamic sparse attention (MInference) for long-context pre-filling on NVIDIA GPUs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "patch", "unpatch"]


def __getattr__(name: str) -> Any:
    # `patch`/`unpatch` import torch and transformers: only pay for them when asked.
    if name in ("patch", "unpatch"):
        from .runtime import patch as patch_module

        return getattr(patch_module, name)
    raise AttributeError(f"module 'minfer' has no attribute {name!r}")
