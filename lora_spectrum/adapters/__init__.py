"""LoRA files read into a denoiser, swapped, fused and routed; nothing here chooses devices (docs/adapters.md)."""

from lora_spectrum.adapters.hotswap import HotSwapper, SwapRecord
from lora_spectrum.adapters.reading import PreparedAdapter
from lora_spectrum.adapters.routing import MIX_BASE
from lora_spectrum.adapters.slot import Slot

__all__ = ["MIX_BASE", "HotSwapper", "PreparedAdapter", "Slot", "SwapRecord"]
