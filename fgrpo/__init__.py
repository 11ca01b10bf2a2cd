"""fgrpo: Flash-GRPO alignment of Wan2.1 text-to-video models, from a laptop to clusters."""

__version__ = "0.1.0"
