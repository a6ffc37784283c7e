"""Extra `prunedata` subcommands: every module here with a `register(subparsers)` function is added."""
