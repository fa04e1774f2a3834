"""Data loading and training: datasets as in-memory tensors, and the paper's training schedule."""
