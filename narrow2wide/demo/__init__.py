"""Generated fleets for the demo, the tests and the benchmarks, and the demo guide."""
