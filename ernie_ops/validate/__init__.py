"""Validate a deployment: smoke test, load benchmark, evaluation, comparison."""
