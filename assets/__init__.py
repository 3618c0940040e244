"""Asset definitions, one module per stage. Thin: read upstream manifests, call kura, write through the storage
resource, return a JSON manifest with its content version as the Dagster DataVersion."""
