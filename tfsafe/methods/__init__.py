"""The published pipelines, built from tfsafe.compress, tfsafe.safety and tfsafe.objectives."""
