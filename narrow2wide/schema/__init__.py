"""Steps 1 and 2: analyse the source into a schema file, create the wide tables from it."""
