"""The tiny pipelines: an unknown family is refused with the choices, before anything is built."""

from __future__ import annotations

import pytest

from lora_spectrum import demo
from lora_spectrum.errors import ConfigError


def test_an_unknown_family_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown family 'sd15'; choose sdxl or z-image"):
        demo.build_tiny("sd15")
