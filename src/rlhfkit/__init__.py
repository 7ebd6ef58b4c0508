"""rlhfkit: reinforcement learning from human feedback for language models, end to end."""

__version__ = "0.1.0"
