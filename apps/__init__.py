"""End-user applications on top of the CLI: the classroom analysis API and its local web page."""
