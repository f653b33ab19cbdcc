"""Evaluation protocols: benchmark datasets and the procedural unseen domains."""
