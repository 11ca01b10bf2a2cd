"""Helpers shared by the tests: launching tiny runs, small recipes, tiny reward models, k8s and Slurm test utilities."""
