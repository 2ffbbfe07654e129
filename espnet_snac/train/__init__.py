"""Training machinery: the GAN trainer, its task, checkpoints and numeric-fault handling."""
