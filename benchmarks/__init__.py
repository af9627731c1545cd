"""The benchmark harness: `python -m benchmarks.run`; results in benchmarks/RESULTS.md."""
