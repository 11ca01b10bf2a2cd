"""Prompt files and the resumable prompt sampler."""
