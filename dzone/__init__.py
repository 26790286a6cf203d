"""The ``dzone`` command line: the one package that imports everything (ingest, serve, simulator, shared)."""
