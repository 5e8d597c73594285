"""A run watched while it trains: the folder watcher and the judge of each complete file."""
