"""datamodules.datasets package."""
