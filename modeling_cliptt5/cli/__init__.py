"""The package's commands: argument parsing over the library, which never imports them (the modules:
docs/modules.md)."""
