"""What the ingest worker and the serve process share: settings, database access, the change feed."""
