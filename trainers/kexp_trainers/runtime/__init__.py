"""What every trainer shares: S3 access from the contract, checkpoints, progress, results."""
