"""Speech for the speaker encoder: espeak-ng sentences over noise (calibration/speech.py), as
1.6 s partial utterances of power mel frames. Calibration and held-out clips are spoken from
different documents with different seeds; voices, speeds and pitches vary per clip."""
from __future__ import annotations

import numpy as np


def speaker_samples(part: str, count: int | None = None) -> list[dict[str, np.ndarray]]:
    from calibration.speech import clips
    from models import resemblyzer_encoder as m

    count = count or (64 if part == "calib" else 48)
    windows = [w for audio in clips(part, 24) for w in m.partials(m.mel_frames(audio))]
    rng = np.random.default_rng(60 if part == "calib" else 61)
    picked = sorted(rng.choice(len(windows), size=min(count, len(windows)), replace=False))
    return [{m.INPUT_NAME: windows[i]} for i in picked]
