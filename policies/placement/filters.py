"""The Kubernetes node filters a secondary scheduler must honour, as pure values (what kube-scheduler's
``NodeUnschedulable``, ``TaintToleration``, ``NodeAffinity`` plugins decide for a pod and a node).

- :class:`Taint` and :class:`Toleration`: a node's ``NoSchedule`` and ``NoExecute`` taints keep every pod off it
  unless the pod tolerates them; ``PreferNoSchedule`` is a preference and filters nothing (as in kube-scheduler).
  A toleration with an empty key and ``Exists`` tolerates every taint; an empty effect matches every effect.
- :class:`Requirement`: one ``NodeSelectorRequirement`` (``In``, ``NotIn``, ``Exists``, ``DoesNotExist``, ``Gt``,
  ``Lt`` on a label; ``matchFields`` on ``metadata.name``). A required node-affinity term ANDs its requirements,
  the terms are ORed, and a term with no requirement matches no node (the API's rule). ``spec.nodeSelector`` is
  ANDed with the affinity.

Values come from untrusted objects: an unknown operator or a malformed ``Gt`` value matches nothing, never
raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

FILTERED_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
OPERATORS = frozenset({"In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"})


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def __str__(self) -> str:
        return f"{{{self.key}{'=' + self.value if self.value else ''}:{self.effect}}}"


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if not self.key:
            return self.operator == "Exists"
        if self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        return self.operator in ("Equal", "") and self.value == taint.value


def untolerated(taints: tuple[Taint, ...], tolerations: tuple[Toleration, ...]) -> Taint | None:
    """The first ``NoSchedule``/``NoExecute`` taint no toleration tolerates (``None``: the pod may go there)."""
    for t in taints:
        if t.effect in FILTERED_EFFECTS and not any(tol.tolerates(t) for tol in tolerations):
            return t
    return None


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()
    field: bool = False
    """A ``matchFields`` requirement (only ``metadata.name`` exists) instead of a label one."""

    def matches(self, labels: Mapping[str, str], name: str) -> bool:
        if self.field:
            if self.key != "metadata.name":
                return False
            present, value = True, name
        else:
            present, value = self.key in labels, labels.get(self.key, "")
        op = self.operator
        if op == "In":
            return present and value in self.values
        if op == "NotIn":
            return not present or value not in self.values
        if op == "Exists":
            return present
        if op == "DoesNotExist":
            return not present
        if op in ("Gt", "Lt") and present and len(self.values) == 1:
            try:
                have, bound = int(value), int(self.values[0])
            except ValueError:
                return False
            return have > bound if op == "Gt" else have < bound
        return False


NodeSelectorTerm = tuple[Requirement, ...]


def selects(
    selector: tuple[tuple[str, str], ...],
    terms: tuple[NodeSelectorTerm, ...],
    labels: Mapping[str, str],
    name: str,
) -> bool:
    """Whether ``spec.nodeSelector`` (``selector``) and the required node-affinity ``terms`` admit the node
    (``terms`` empty: no affinity)."""
    if any(labels.get(k) != v for k, v in selector):
        return False
    if not terms:
        return True
    return any(term and all(r.matches(labels, name) for r in term) for term in terms)
