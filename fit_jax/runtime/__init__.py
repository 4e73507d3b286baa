"""Process-wide settings: XLA:CPU flags, the compilation cache, log levels,
atomic file writes."""
