"""The DuckLake: attaching it, snapshots and their labels, readers' connections, and maintenance."""
