from redhand.cli import entry_point

entry_point()
