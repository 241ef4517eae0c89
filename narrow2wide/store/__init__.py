"""The tool's durable state: the chunk ledger (in the target database) and the cutoff store (a file)."""
