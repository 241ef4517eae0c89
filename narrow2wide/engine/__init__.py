"""The engine that reads, pivots, encodes and writes one window of one ship (or the fleet)."""
