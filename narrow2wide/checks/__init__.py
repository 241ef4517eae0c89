"""Read-only checks: status and validation (and validation's repair)."""
