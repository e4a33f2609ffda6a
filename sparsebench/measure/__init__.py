"""Measurement: the harness owns the clock (timing), memory (a fresh process per execution),
correctness against the dense reference, and the results file."""
