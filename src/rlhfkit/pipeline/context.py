"""``Context``: what the stages of ``rlhfkit pipeline`` share while it runs: the config, the
output folder, and the fingerprints and outputs of the stages run so far."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Context:
    config: Any  # PipelineConfig
    out: Path
    fingerprints: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)

    def dir(self, stage: str) -> Path:
        return self.out / stage

    @property
    def init_model(self) -> str:
        return self.outputs["init"]["model"]

    @property
    def start_model(self) -> str:
        """The model policy optimisation starts from (and the reference of the evaluation)."""
        return self.outputs["sft"]["model"] if self.config.run_sft else self.init_model

    @property
    def rm_spec(self) -> str:
        return f"rm:{self.dir('reward') / 'model'}"
