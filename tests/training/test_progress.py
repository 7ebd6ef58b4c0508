"""Progress bars: one long unit of work still shows a moving clock."""

import threading
import time

from rlhfkit.training.logging import progress_bar, ticking


def _tick_threads() -> int:
    return sum(t.name == "progress-tick" for t in threading.enumerate())


def test_a_ticking_bar_is_redrawn_while_one_unit_of_work_runs(monkeypatch, capsys):
    """A bar whose one unit takes 0.5 s is drawn once at the start and once per update; under
    ``ticking(every=0.05)`` it is redrawn about every 0.05 s meanwhile (at least 4 times allowing
    for a busy machine), and the redrawing thread ends with the block."""
    monkeypatch.delenv("RLHFKIT_NO_PROGRESS", raising=False)
    with progress_bar(2, desc="parse", unit="part") as bar, ticking(bar, every=0.05):
        assert _tick_threads() == 1
        time.sleep(0.5)
        bar.update(1)
    assert _tick_threads() == 0
    before_update = capsys.readouterr().err.split("1/2")[0]
    assert before_update.count("0/2") >= 5  # the first draw and at least 4 redraws

    with progress_bar(2, desc="still", unit="part") as bar:  # no ticking: drawn at the start only
        time.sleep(0.2)
        bar.update(1)
    assert capsys.readouterr().err.split("1/2")[0].count("0/2") == 1


def test_a_disabled_bar_gets_no_redrawing_thread(monkeypatch):
    monkeypatch.setenv("RLHFKIT_NO_PROGRESS", "1")
    with progress_bar(2, desc="quiet") as bar, ticking(bar, every=0.01):
        assert _tick_threads() == 0
