"""What autoaccel's own tests use, shipped so an extension written outside autoaccel can test itself the same way:
tiny seeded pipelines of every supported class (``pipelines``), a cheap problem with a known Pareto front
(``synthetic``) and the contract suites a technique, an optimizer backend or a target kind must pass
(``contracts``). Nothing here downloads: the pipelines and their tokenizers are built in code."""
