"""What every command shares at run time: console output, signals, the CPU allocator and provenance
(``docs/development.md`` maps every module)."""
