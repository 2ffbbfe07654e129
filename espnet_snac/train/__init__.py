"""Training machinery for SNAC: trainer, data pipeline, planning, monitoring."""
