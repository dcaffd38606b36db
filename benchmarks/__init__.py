"""Benchmarks and baselines beside the library (torchvision references style): run_offline.py, timing.py, ..."""
