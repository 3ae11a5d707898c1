"""posereid.reid_integration."""
