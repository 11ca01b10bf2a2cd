"""Distributed building blocks below the models and the trainer: precision policy."""
