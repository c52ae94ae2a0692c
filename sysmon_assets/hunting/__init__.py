"""Threat hunting beyond the recipe: Sigma rules converted to DuckDB conditions (the ancestry models are SQL)."""
