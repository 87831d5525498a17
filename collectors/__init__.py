"""energymon.collectors."""
