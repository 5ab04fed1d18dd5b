"""Trace-driven simulator: traces, profiles, the simulated cluster and reports."""
