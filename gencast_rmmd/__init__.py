"""gencast-rmmd: distil GenCast into a few-step student with Rewarded Moment Matching Distillation."""

__version__ = "0.1.0"
