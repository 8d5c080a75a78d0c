"""autoaccel.space.spaces."""
