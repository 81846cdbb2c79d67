"""The example's ``embedder`` package (see :mod:`testbed.serve_apps.demo`)."""
