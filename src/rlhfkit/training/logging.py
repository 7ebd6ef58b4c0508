"""Metrics to JSONL (always) and TensorBoard (when installed), and a progress bar."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Appends one JSON object per `log` call to `<dir>/metrics.jsonl`.

    On resume from step S, lines logged after S by the interrupted run are dropped first,
    so the file reads as one uninterrupted run.
    """

    def __init__(
        self, output_dir: str | Path, enabled: bool = True, tensorboard: bool = True, resume_step: int | None = None
    ):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = []
            for line in self.path.read_text(encoding="utf-8").split("\n"):
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    pass  # a line cut by the kill
            self.path.write_text("".join(l + "\n" for l in kept), encoding="utf-8")
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            except ImportError:
                self._tb = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def progress_bar(total: int, initial: int = 0, desc: str = "", enabled: bool = True, unit: str = "step"):
    """A tqdm bar with rate and ETA; quiet on non-main ranks or when RLHFKIT_NO_PROGRESS is set."""
    disable = not enabled or bool(os.environ.get("RLHFKIT_NO_PROGRESS"))
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, disable=disable, smoothing=0.1)


@contextmanager
def ticking(bar, every: float = 1.0):
    """Redraw ``bar`` every ``every`` seconds from a daemon thread while the block runs, so its
    elapsed time moves during one long unit of work (parsing a GGUF file, one batch of replies,
    one scoring pass): a bar that sits still for half a minute reads as a hung run. tqdm's own
    monitor thread only tunes ``miniters``; it never redraws. A disabled bar gets no thread."""
    if getattr(bar, "disable", True) or every <= 0:
        yield bar
        return
    stop = threading.Event()

    def redraw() -> None:
        while not stop.wait(every):
            bar.refresh()

    thread = threading.Thread(target=redraw, name="progress-tick", daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()
