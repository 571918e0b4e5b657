"""Bulk audio: many files in, one row per file out (the pipeline runs as a Ray job)."""
