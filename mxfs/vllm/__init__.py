"""The vLLM ``mx`` load format: NIXL pulls from running workers, else mxfs files."""
