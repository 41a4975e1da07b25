"""Training data: sources, files, click logs, synthetic data and the bundled datasets."""
