"""The demo's trainer: the shapes data set, the base and LoRA training runs, the tiny CLIP, the oracle. Imported by nothing in the product."""
