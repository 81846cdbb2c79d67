"""Health: RayService status → :class:`gitsync.model.Health`, stricter than Ready=True. Pure."""
