"""Synthetic data: constitutional AI (constitution), distillation (distill), model
collapse (collapse) and synthetic question-answer pairs (qa)."""
