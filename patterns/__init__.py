"""Pattern contract, PyTorch reference and configs: the definition every other face is checked against."""

from .config import DEFAULT_HEAD, PatternConfig, default_config, load_config
from .spec import BLOCK, HeadPattern, Kind, PatternError, validate_attributes

__all__ = [
    "BLOCK",
    "DEFAULT_HEAD",
    "HeadPattern",
    "Kind",
    "PatternConfig",
    "PatternError",
    "default_config",
    "load_config",
    "validate_attributes",
]
