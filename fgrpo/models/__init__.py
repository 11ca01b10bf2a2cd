"""Model families. Each keeps its loading (and, with the distributed trainer, parallelisation) together."""
