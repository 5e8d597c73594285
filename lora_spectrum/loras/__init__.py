"""The loras folder and its files: the catalog, key formats, epoch names, the hashes tools name a LoRA by."""
