"""autoaccel.metrics."""
