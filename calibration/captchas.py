"""Captchas for the captcha recogniser: random 4-6 character strings drawn by the ``captcha``
package's ImageCaptcha (its bundled fonts, warping, noise dots and curves), the kind of image
the model reads. Calibration and held-out strings come from different seeds."""
from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np


def captcha_samples(part: str, count: int | None = None) -> list[dict[str, np.ndarray]]:
    import captcha.image

    from models import captcha_crnn as m

    count = count or (64 if part == "calib" else 48)
    rng = random.Random(50 if part == "calib" else 51)
    generator = captcha.image.ImageCaptcha(width=m.WIDTH, height=m.HEIGHT)
    # ImageCaptcha draws from ``secrets`` (unseeded): lend it a seeded generator for the same
    # images on every run, and put ``secrets`` back afterwards.
    drawing = random.Random(52 if part == "calib" else 53)
    saved = captcha.image.secrets
    captcha.image.secrets = SimpleNamespace(randbelow=drawing.randrange, randbits=drawing.getrandbits,
                                            choice=drawing.choice)
    try:
        samples = []
        for _ in range(count):
            text = "".join(rng.choice(m.ALPHABET) for _ in range(rng.randint(4, 6)))
            samples.append({m.INPUT_NAME: m.preprocess(generator.generate_image(text))})
    finally:
        captcha.image.secrets = saved
    return samples
