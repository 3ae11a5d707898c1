"""posereid.models."""
