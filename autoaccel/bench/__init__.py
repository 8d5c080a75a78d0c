"""Benchmarks whose tables the README cites; each writes reports/bench/<name>.md."""
