"""posereid.experiments."""
