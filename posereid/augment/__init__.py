"""posereid.augment."""
