"""Backends that place `fgrpo train` processes: one interface (`base.Backend`), one module each."""

from .base import Backend, LaunchJob


def get_backend(name: str) -> Backend:
    if name == "local":
        from .local import LocalBackend

        return LocalBackend()
    if name == "slurm":
        from .slurm import SlurmBackend

        return SlurmBackend()
    if name == "k8s":
        from .k8s.backend import KubernetesBackend

        return KubernetesBackend()
    raise ValueError(f"--backend: unknown backend {name!r} (available: local, slurm, k8s)")


__all__ = ["Backend", "LaunchJob", "get_backend"]
