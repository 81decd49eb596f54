"""One module per `geomkit` subcommand (see geomkit.cli)."""
