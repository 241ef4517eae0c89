"""The bottom layer: errors, settings, the shared data model, small pure helpers (no database)."""
