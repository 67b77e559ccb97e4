"""Offline teachers: graders that write feedback, a verdict and a refinement without a model.

* ``reference`` (:mod:`generation.teachers.reference`) — answer-key grading against the gold
  answer; its refinement is the gold rationale.
* ``verifying`` (:mod:`generation.teachers.verifying`) — re-derives the computation from the
  problem and checks the response's own steps; its refinement continues from the last right
  step.

:func:`load_teacher` is the one place a ``--teacher`` spec is looked up: an offline teacher
by name, or None for a model spec (``openai:…``, ``hf:…``).
"""

from __future__ import annotations

from generation.teachers.base import Critique, OfflineTeacher

__all__ = ["OFFLINE_TEACHERS", "Critique", "OfflineTeacher", "is_offline_teacher", "load_teacher"]

#: Offline teacher specs and the class that implements each (imported when used).
OFFLINE_TEACHERS = {
    "reference": "generation.teachers.reference:ReferenceTeacher",
    "verifying": "generation.teachers.verifying:VerifyingTeacher",
}


def is_offline_teacher(spec: str) -> bool:
    """Whether ``spec`` names an offline teacher rather than a model."""
    return spec.strip() in OFFLINE_TEACHERS


def load_teacher(spec: str) -> OfflineTeacher | None:
    """The offline teacher ``spec`` names, or None when it is a model spec."""
    import importlib

    target = OFFLINE_TEACHERS.get(spec.strip())
    if target is None:
        return None
    module, _, name = target.partition(":")
    teacher: OfflineTeacher = getattr(importlib.import_module(module), name)()
    return teacher
