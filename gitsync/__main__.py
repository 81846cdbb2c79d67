"""``python -m gitsync``: the same CLI as the ``gitsync`` command."""

from gitsync.cli import main

raise SystemExit(main())
