"""A handle on kmock's Kubernetes emulator for the agent's tests (the fixture is in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from shadowscale.benchmarks.emulator import enforcing_resource_version, fixed_guess_k8s

__all__ = ["K8s", "deployment", "enforcing_resource_version", "fixed_guess_k8s"]


@dataclass
class K8s:
    """The emulator, its base URL and a plain HTTP session to create/modify objects like another client would."""

    emulator: Any
    url: str
    http: aiohttp.ClientSession

    async def create(self, kind: str, namespace: str, obj: dict[str, Any]) -> None:
        group = "apis/coordination.k8s.io/v1" if kind == "leases" else "apis/apps/v1"
        obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}  # the API server fills it in
        resp = await self.http.post(f"{self.url}/{group}/namespaces/{namespace}/{kind}", json=obj)
        assert resp.status < 300, await resp.text()

    async def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        resp = await self.http.patch(
            f"{self.url}/apis/apps/v1/namespaces/{namespace}/{kind}/{name}",
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert resp.status < 300, await resp.text()

    def requests(self, method: str) -> list[Any]:
        """Requests the emulator received with this HTTP method, in order."""
        return list(self.emulator[method.lower()])

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        group = "coordination.k8s.io/v1" if kind == "leases" else "apps/v1"
        obj: dict[str, Any] = self.emulator.objects[f"{group}/{kind}", namespace, name].raw
        return obj


def deployment(
    name: str, namespace: str, *, replicas: int, image: str, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """A one-container Deployment as the rollout tests start from: 1 CPU, ``BATCH_SIZE=1`` in its environment."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}, "annotations": annotations or {}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "image": image,
                            "env": [{"name": "BATCH_SIZE", "value": "1"}],
                            "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
                        }
                    ]
                },
            },
        },
    }
