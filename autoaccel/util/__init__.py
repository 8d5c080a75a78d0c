"""autoaccel.util."""
