"""Analyses of a Target: crash kinds (:mod:`redhand.analysis.crash`), and later stack
overflow, recursion cycles and crash signatures.

Nothing is imported here: ``import redhand.analysis`` costs nothing until a module is used.
"""
