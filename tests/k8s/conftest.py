"""The `kube` fixture, for every test in this folder: the in-memory Kubernetes API server of
test_client.py, which the kubernetes client reaches through a generated $KUBECONFIG."""

from __future__ import annotations

import pytest

from tests.k8s.test_client import FakeKube, write_kubeconfig


@pytest.fixture
def kube(tmp_path, monkeypatch):
    fake = FakeKube()
    for var in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "KUBERNETES_SERVICE_HOST",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", fake.url)))
    yield fake
    fake.stop()
