"""Model runners that ship with trio-supervise (import each from its module)."""
