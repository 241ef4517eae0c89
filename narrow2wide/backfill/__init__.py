"""Step 3: the chunked backfill, its workers and its progress line."""
