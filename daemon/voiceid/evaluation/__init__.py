"""Offline and streaming evaluation: trials, metrics (EER, minDCF, DET), embedding cache.

``voiceid eval`` (``voiceid.cli.evaluate``) puts these together; docs/evaluation.md
describes the commands and the results on the shared speech.
"""
