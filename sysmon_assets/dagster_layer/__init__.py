"""The Dagster layer: one asset per SQL model, the recipe's checks, the jobs, schedules, sensors, the
resource that hands assets the pipeline, and the run report ``make run`` prints."""
