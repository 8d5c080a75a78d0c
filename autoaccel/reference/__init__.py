"""autoaccel.reference."""
