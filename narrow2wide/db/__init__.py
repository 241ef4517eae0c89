"""Database plumbing: connections, the runtime, the narrow source, the catalogue, every advisory-lock key."""
