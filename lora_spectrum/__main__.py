"""``python -m lora_spectrum``: the command line (see ``cli/``)."""

import sys

from lora_spectrum.cli import main

if __name__ == "__main__":
    sys.exit(main())
