"""The shapes data set and its oracle: drawn images read back as the colour and the ink they were drawn with."""

from __future__ import annotations

import numpy as np
import pytest

from lora_spectrum.errors import ConfigError
from tools.demo_trainer import shapes


def test_measures_on_drawn_images():
    rng = np.random.default_rng(0)
    for colour in ("red", "green", "blue", "yellow"):
        plain = shapes.draw(colour, "square", "cream", rng)
        assert shapes.closest_colour(plain) == colour
        assert shapes.ink_fraction(plain) == 0.0
        inked = shapes.draw(colour, "square", "cream", rng, ink=True)
        assert shapes.closest_colour(inked) == colour  # the ink is dark, so it does not count toward the hue
        assert shapes.ink_fraction(inked) > 0.05


def test_an_unknown_shape_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown shape 'hexagon'"):
        shapes.draw("red", "hexagon", "white", np.random.default_rng(0))
