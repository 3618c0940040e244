"""The Dagster code location (`pipelines.definitions`), jobs, schedules, sensors and YAML specs."""
