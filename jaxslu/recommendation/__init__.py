"""Recommendation: (contrastive) KGAT over a collaborative knowledge graph."""
