"""Retrieval-augmented generation: finding the passages a prompt should
quote. embeddings.py turns texts into vectors whose dot product says how
alike they are, from the model's own hidden states.
"""
