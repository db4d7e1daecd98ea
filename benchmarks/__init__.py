"""Load and overhead measurements of fraud-inference. Timings live here, never in the tests."""
