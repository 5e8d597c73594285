"""The exception root: short messages, typed errors, and the one translating boundary."""

from __future__ import annotations

import pytest

from lora_spectrum.errors import (
    MAX_MESSAGE,
    BaseLoadError,
    Cancelled,
    LoraLoadError,
    LoraSpectrumError,
    NetworkError,
    OutOfMemoryError,
    RenderError,
    shorten,
    translated,
)


def test_a_refusal_is_one_short_line_whatever_the_library_said():
    wall = "\n".join(f"lora_unet_block_{i}.lora_down.weight" for i in range(20_000))
    err = LoraLoadError("/loras/jimeng_10.safetensors", f"cannot be loaded ({wall})")
    assert len(err.cause) <= MAX_MESSAGE and "\n" not in str(err)
    assert str(err).startswith("/loras/jimeng_10.safetensors: cannot be loaded (lora_unet_block_0")
    assert shorten("short") == "short"


def test_translated_turns_library_errors_into_ours_and_lets_ours_through():
    with pytest.raises(RenderError, match="render failed: boom") as info:
        with translated(lambda exc: RenderError(f"render failed: {exc}")):
            raise ValueError("boom")
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(Cancelled), translated(lambda exc: RenderError(str(exc))):
        raise Cancelled("cancelled")
    with pytest.raises(KeyError), translated(lambda exc: RenderError(str(exc)), KeyError):
        raise KeyError("passes through")


def test_out_of_memory_is_a_render_error_and_cancel_a_type_of_its_own():
    assert issubclass(OutOfMemoryError, RenderError) and issubclass(Cancelled, LoraSpectrumError)
    assert not issubclass(Cancelled, RenderError)


def test_a_hub_that_cannot_be_reached_is_a_base_load_error_of_its_own_kind_that_keeps_the_endpoint():
    err = NetworkError("a/b: cannot reach http://127.0.0.1:9 (connection refused)", "http://127.0.0.1:9")
    assert isinstance(err, BaseLoadError) and err.endpoint == "http://127.0.0.1:9"
    assert NetworkError.kind != BaseLoadError.kind and str(err).startswith("a/b: cannot reach")
