"""The regression targets of ratings: each rating mapped to [0, 1] by its scale, and optionally
each labeler's own scale removed (``normalise_ratings: per_labeler``), with the training part's
statistics, so that a lenient and a strict labeler who order responses alike give the same targets.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rlhfkit.data.errors import DataError

if TYPE_CHECKING:
    from rlhfkit.recipes.reward import RewardConfig


def rating_target(r) -> float:
    """A rating mapped to [0, 1] by its scale: the regression target."""
    span = (r.scale_max - r.scale_min) or 1.0
    return (r.rating - r.scale_min) / span


@dataclass(frozen=True)
class LabelerScales:
    """Per-labeler statistics of the [0, 1] rating targets of a training set: ``labelers`` maps an
    id to its (mean, population sd), for labelers with at least two ratings that differ; ``mean``
    and ``sd`` are those of all the ratings (the pooled scale)."""

    labelers: dict
    mean: float
    sd: float


def labeler_scales(records: list) -> LabelerScales:
    """:class:`LabelerScales` of ``records`` (rating records)."""
    targets = [rating_target(r) for r in records]
    by_labeler: dict = {}
    for r, t in zip(records, targets):
        if r.labeler is not None:
            by_labeler.setdefault(r.labeler, []).append(t)
    scales = {
        k: (statistics.fmean(v), statistics.pstdev(v))
        for k, v in by_labeler.items()
        if len(v) >= 2 and statistics.pstdev(v) > 0
    }
    return LabelerScales(scales, statistics.fmean(targets), statistics.pstdev(targets))


def normalised_targets(records: list, scales: LabelerScales) -> list[float]:
    """Each rating's target with its labeler's scale removed: ``mean + sd * (t - m_l) / s_l``, the
    labeler's z-score mapped to the pooled mean and sd (``t`` the [0, 1] rating, ``m_l``, ``s_l``
    the labeler's mean and sd in ``scales``). A lenient and a strict labeler who order responses
    alike then give them the same targets. Mapped back rather than kept as z so the scores stay on
    the scale of an unnormalised run (comparable MSE, rewards of the same size). Ratings without
    a labeler, or of a labeler not in ``scales`` (fewer than two distinct training ratings: no
    scale to remove), keep their plain target."""
    out = []
    for r in records:
        t = rating_target(r)
        if r.labeler in scales.labelers:
            m, sd = scales.labelers[r.labeler]
            t = scales.mean + scales.sd * (t - m) / sd
        out.append(t)
    return out


def rating_targets(config: RewardConfig, train: list, val: list, held: list) -> dict:
    """The regression targets of each part (``{"train", "val", "eval"}``): the ratings mapped to
    [0, 1], or with ``normalise_ratings: per_labeler`` each labeler's scale removed with the
    training part's statistics (:func:`normalised_targets`; the held-out ratings are scored
    against targets made the same way)."""
    if config.normalise_ratings == "none":
        return {}
    scales = labeler_scales(train)
    if not scales.labelers:
        raise DataError(
            "normalise_ratings per_labeler: no labeler has two different ratings in the training part "
            "(records need a `labeler` id: rlhfkit feedback export writes one)",
            path=config.data,
        )
    kept = sum(1 for r in train if r.labeler not in scales.labelers)
    print(
        f"reward: ratings normalised per labeler for {len(scales.labelers)} labelers (z-scores mapped to the "
        f"pooled mean {scales.mean:.3f} and sd {scales.sd:.3f} of the [0, 1] ratings); {kept} of {len(train)} "
        "training ratings kept as given (no labeler id, or a labeler without two different ratings)"
    )
    return {
        "train": normalised_targets(train, scales),
        "val": normalised_targets(val, scales),
        "eval": normalised_targets(held, scales),
    }
