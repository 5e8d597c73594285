"""``python -m lora_spectrum bench``: how fast and how lean switching epochs is, side by side with the ways people
switch LoRAs today, in one run on one model. Timings belong here, never in tests; the manual: docs/bench/README.md.
"""

from lora_spectrum.bench.models import MODELS
from lora_spectrum.bench.report import format_table
from lora_spectrum.bench.run import run_benchmark

__all__ = ["MODELS", "format_table", "run_benchmark"]
