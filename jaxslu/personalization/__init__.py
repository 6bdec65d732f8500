"""Personalization: incremental user embeddings (request + long-term and short-term histories)."""
