"""What a render leaves: grid files (PNG parameters, grid, manifest) and the run history."""
