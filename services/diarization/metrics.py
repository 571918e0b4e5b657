"""Diarization error rate, for the tests and the benchmark.

Frame-based at 10 ms: a 0.25 s collar around every reference boundary is not scored, and
hypothesis speakers are mapped to reference speakers to maximise overlap (Hungarian).
One speaker per instant on both sides (no overlapped speech).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.diarization.pipeline import Turn

FRAME_S = 0.01


def _frames(turns: Sequence[Turn], count: int, names: dict[str, int]) -> np.ndarray:
    out = np.full(count, -1, dtype=np.int64)
    for turn in turns:
        index = names.setdefault(turn.speaker, len(names))
        out[round(turn.start / FRAME_S) : round(turn.end / FRAME_S)] = index
    return out


def der(reference: Sequence[Turn], hypothesis: Sequence[Turn], collar: float = 0.25) -> float:
    """(missed + false alarm + confusion) / scored reference speech."""
    from scipy.optimize import linear_sum_assignment

    end = max([t.end for t in reference] + [t.end for t in hypothesis] + [0.0])
    count = int(np.ceil(end / FRAME_S)) + 1
    ref_names: dict[str, int] = {}
    hyp_names: dict[str, int] = {}
    ref = _frames(reference, count, ref_names)
    hyp = _frames(hypothesis, count, hyp_names)
    scored = np.ones(count, dtype=bool)
    pad = round(collar / FRAME_S)
    for turn in reference:
        for edge in (turn.start, turn.end):
            centre = round(edge / FRAME_S)
            scored[max(0, centre - pad) : centre + pad] = False
    ref, hyp = ref[scored], hyp[scored]
    speech = int((ref >= 0).sum())
    if speech == 0:
        return 0.0
    overlap = np.zeros((max(1, len(ref_names)), max(1, len(hyp_names))))
    both = (ref >= 0) & (hyp >= 0)
    np.add.at(overlap, (ref[both], hyp[both]), 1)
    rows, cols = linear_sum_assignment(-overlap)
    matched = float(overlap[rows, cols].sum())
    missed = int(((ref >= 0) & (hyp < 0)).sum())
    false_alarm = int(((ref < 0) & (hyp >= 0)).sum())
    confusion = int(both.sum()) - matched
    return (missed + false_alarm + confusion) / speech
