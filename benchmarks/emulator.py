"""kmock's Kubernetes emulator made to behave like an API server where kmock 0.8 does not, for ``bench chaos`` and
the tests (private API, hence the pin; kmock is a development dependency)."""

from __future__ import annotations

from typing import Any


def fixed_guess_k8s(original: Any) -> Any:
    """kmock 0.8 gaps, fixed on the test side (private API, hence the pin): kubernetes-asyncio sends ``watch=True``
    where kmock expects ``true``, and kmock answers PUT (``replace_*``) with 404 instead of treating it as an
    update of the named object."""
    from kmock._internal import enums

    def guess(k8s: Any, method: Any, query: dict[str, str]) -> Any:
        query = dict(query)
        if "watch" in query:
            query["watch"] = query["watch"].lower()
        if method == enums.method.PUT and k8s.group is not None and k8s.name is not None:
            return enums.action.UPDATE
        return original(k8s, method, query)

    return guess


def enforcing_resource_version(original: Any) -> Any:
    """A third test-side gap of kmock 0.8: it ignores ``metadata.resourceVersion``. An API server keeps one per
    object, bumps it on every write and answers 409 Conflict to a write (PUT) carrying a stale one — optimistic
    concurrency that leader election and scale preconditions rely on. This wraps the emulator's request handler to do
    the same: writes are serialised, a PUT or PATCH whose resourceVersion differs from the stored one is refused with
    409 (a PATCH without one is unconditional), and every create or update stores a new resourceVersion (returned in
    the response)."""
    import asyncio
    import itertools

    import attrs
    from kmock._internal import enums
    from kmock._internal.k8s import KubernetesObjectConflictError

    @attrs.frozen
    class StaleResourceVersion(KubernetesObjectConflictError):
        reason: str = "Conflict"
        message: str = "the object has been modified; please apply your changes to the latest version and try again"

    counter = itertools.count(1000)
    locks: dict[int, asyncio.Lock] = {}

    async def handle(self: Any, request: Any) -> Any:
        writes = (enums.action.CREATE, enums.action.UPDATE)
        if request.resource is None or request.action not in writes or not isinstance(request.data, dict):
            return await original(self, request)
        lock = locks.setdefault(id(self), asyncio.Lock())
        async with lock:
            meta = request.data.setdefault("metadata", {})
            if request.action == enums.action.UPDATE:  # PUT, and a PATCH that names a resourceVersion
                key = (request.resource, request.namespace, request.name)
                stored = self._objects[key] if key in self._objects else None  # noqa: SIM401 (no .get on ObjectsArray)
                sent = meta.get("resourceVersion")
                if stored is not None and not stored.deleted:
                    current = (stored.get("metadata") or {}).get("resourceVersion")
                    if sent is not None and current is not None and str(sent) != str(current):
                        return await self._render_error(StaleResourceVersion())
            meta["resourceVersion"] = str(next(counter))
            return await original(self, request)

    return handle
