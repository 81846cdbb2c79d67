"""Diff: desired vs live RayServices → Ray-aware changes.

Owns normalisation (only what Git owns), the semantic ``serveConfigV2`` diff and the
classification into actions with :mod:`gitsync.kuberay`'s rules. Pure.
"""
