"""Benchmarks of trio-supervise, each against a hand-written Trio baseline in the same run."""
