"""Streamlit views: widgets in, plain values out, results drawn. No computing and no model loading here; the
shared engine comes from ``ui.resources``."""
