"""Rendering: the plan, the engine and its admission, compile and fuse policies, the cache, runs, probes."""
