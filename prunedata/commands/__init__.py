"""The command line's larger subcommands (``evaluate``) and what the subcommands share (``common``)."""
