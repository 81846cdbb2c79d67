"""The example repository's Serve apps, for ``make demo RAY=real`` (testbed/demo_ray.py).

examples/plain-layout/ names apps of a team's own (``embedder.serve:app``, ``ranker.serve:app``,
``ranker.health:app``) fetched from ``working_dir`` archives on example.com, which do not exist
and which the test bed's Ray heads could not download anyway. The real-Ray demo rewrites each
import path to this package's module of the same name (``embedder.serve:app`` →
``testbed.serve_apps.demo.embedder.serve:app``), so the applications and deployment names, the
``user_config`` and the story's edits stay the examples' own. The apps are small stand-ins for
the models: each answers at once with what it was configured with and the cluster it runs on.
"""
