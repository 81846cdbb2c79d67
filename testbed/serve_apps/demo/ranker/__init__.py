"""The example's ``ranker`` package (see :mod:`testbed.serve_apps.demo`)."""
