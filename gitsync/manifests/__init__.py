"""Manifests: files of one environment at one revision → desired RayServices.

Owns parsing, validation with ``file:line`` errors and the repo config (``gitsync.yaml``).
Pure: receives file contents, never runs git or talks to the cluster.
"""
