"""Kernel and end-to-end benchmarks behind `specdec bench <name>` (see cli.BENCHES)."""
