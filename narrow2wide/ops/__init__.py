"""Operating a run on a live source: throttling, pause and resume, metrics and health."""
