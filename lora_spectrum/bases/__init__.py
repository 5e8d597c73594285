"""Base models: the families, loading, the list of bases, downloads, devices."""
