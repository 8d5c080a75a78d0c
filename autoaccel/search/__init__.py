"""autoaccel.cli.search_command."""
