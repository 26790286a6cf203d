"""What the ingest worker and the serve process both import: settings, database access, the feed codec, logs."""
