"""Scoring a model: greedy generation + EM/F1, text metrics, log-likelihood choice, judged accuracy, lm-eval."""
