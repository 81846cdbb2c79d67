"""Kubernetes edge: the only package that imports ``kubernetes``.

Owns the API client (built once, pool sized), server-side apply with field manager
``gitsync``, live listing, leases and events.
"""
