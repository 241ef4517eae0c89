"""The command line: mode handlers, rendering of results, logging setup."""
