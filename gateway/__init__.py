"""energymon.gateway."""
