"""Benchmarks behind `shadowscale bench`: each prints one JSON object."""
