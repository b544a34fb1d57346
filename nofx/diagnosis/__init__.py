"""Diagnosis: which problem pattern the evidence matches, and where the problem started."""
