"""Traffic: synthetic generators and loaders of real request traces."""
