"""narrow-to-wide: ship telemetry from a narrow PostgreSQL table into per-ship wide tables."""
