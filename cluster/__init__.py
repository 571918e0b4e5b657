"""Ray-cluster scope that is not a Serve deployment (job tracker, bulk jobs)."""
