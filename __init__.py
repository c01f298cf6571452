"""minfer: dynamic sparse attention (MInference) for long-context pre-filling on NVIDIA GPUs."""

__version__ = "0.1.0"
