"""autoaccel.pipeline."""
