"""Backends that place `fgrpo train` processes: one interface (`base.Backend`), one module each."""

from .base import Backend, LaunchJob


def get_backend(name: str) -> Backend:
    if name == "local":
        from .local import LocalBackend

        return LocalBackend()
    raise ValueError(f"--backend: unknown backend {name!r} (available: local)")


__all__ = ["Backend", "LaunchJob", "get_backend"]
