"""The `prismer` command: a thin typer layer that parses, calls prismer_core, and prints."""
