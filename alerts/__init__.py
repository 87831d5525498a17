"""energymon.alerts."""
