"""energymon.simulators."""
