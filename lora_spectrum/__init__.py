"""LoRA Spectrum: compare the epochs of a LoRA training run side by side on one resident base model.

Core modules never import streamlit; the Streamlit views live in ``lora_spectrum.ui``.
"""

__version__ = "0.1.0"
