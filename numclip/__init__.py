"""numclip: language-guided ordinal regression with CLIP."""

__version__ = "0.1.0"
