"""Pruning methods other than AdaPruner: influence-based selection and score baselines."""
