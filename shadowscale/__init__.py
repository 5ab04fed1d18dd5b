"""shadowscale: event-driven autoscaling and GPU-sharing placement for ML inference on Kubernetes."""

__version__ = "0.1.0"
