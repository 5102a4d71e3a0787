"""mxfs: lazy, verified, peer-cached model filesystem for LLM inference clusters."""

__version__ = "0.1.0"
