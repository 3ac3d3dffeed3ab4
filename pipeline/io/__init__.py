"""Reading and writing: URLs and kvstores, volumes, sharding, scratch, the output lock, checkpoints, importers, intensity."""
