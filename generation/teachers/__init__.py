"""Offline teachers: graders that write feedback, a verdict and a refinement without a model.

* :mod:`generation.teachers.reference` — answer-key grading against the gold answer.
"""
