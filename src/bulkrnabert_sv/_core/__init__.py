"""Internal building blocks shared by ``pp`` and ``tl`` (not public API)."""
