"""Subcommands beyond search/status/top. Each module here defines ``register(subparsers)``, which
adds its parser(s) with ``set_defaults(handler=FUNCTION)``; ``nasagent.cli`` discovers them, so a
new command is a new module and nothing else changes. A handler takes the parsed args and returns
the exit code; user errors are raised as ``UserError`` (exit 2, one line; see ``nasagent.errors``)."""
