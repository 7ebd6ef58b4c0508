"""Gym-style environments for language tasks (the Gymnasium API; ``pip install 'rlhfkit[envs]'``).

import gymnasium as gym
import rlhfkit.envs  # registers rlhfkit/TextGeneration-v0
env = gym.make("rlhfkit/TextGeneration-v0", tokenizer=tok, prompts=["The film was"], reward="vader")
"""

import gymnasium

from .text import TextGenerationEnv, run_policy_episode

ENV_ID = "rlhfkit/TextGeneration-v0"
if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point="rlhfkit.envs.text:TextGenerationEnv")

__all__ = ["ENV_ID", "TextGenerationEnv", "run_policy_episode"]
