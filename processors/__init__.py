"""energymon.processors."""
