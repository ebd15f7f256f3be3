"""Meta tests: the suite itself is tested against variants with seeded bugs (mutants)."""
