"""Inference latency: measured on a target, predicted from a per-machine table of unit latencies."""
