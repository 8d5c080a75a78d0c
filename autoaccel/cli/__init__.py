"""autoaccel.cli.main."""
