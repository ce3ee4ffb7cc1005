"""Scaling laws and emergence from real sweeps (Kaplan et al. 2020; Hoffmann et al. 2022).

  sweep      model sizes from one dial (depth) trained at several compute budgets (IsoFLOP)
  fit        Approach 2 (a parabola per IsoFLOP curve) and Approach 3 (L = E + A/N^a + B/D^b)
  predict    compute-optimal and inference-aware sizing; a held-out budget's loss
  emergence  every sweep model on the world's tasks under sharp and smooth metrics
  report     the plots and report.md
"""
