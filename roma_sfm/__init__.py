"""roma-sfm: the RoMa dense matcher (arXiv 2305.15404) as a library, and SfM on top of it."""
from .io import ImageReadError, read_image
from .matcher import Matcher, MatchResult, load_matcher, random_matcher
from .presets import DEFAULT_PRESET, PRESETS, RomaConfig, get_preset
from .weights import CheckpointError, load_checkpoint, load_model, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "DEFAULT_PRESET", "ImageReadError", "MatchResult", "Matcher", "PRESETS", "RomaConfig",
    "get_preset", "load_checkpoint", "load_matcher", "load_model", "random_matcher", "read_image",
    "save_checkpoint", "__version__",
]
