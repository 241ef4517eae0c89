"""Step 4: realtime cycles that keep the wide tables current."""
