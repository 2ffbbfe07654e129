"""Training machinery."""
