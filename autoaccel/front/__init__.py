"""autoaccel.front."""
