"""Recipes: loading ERNIEKit YAML with line numbers, its schema, the checks, and the library."""
