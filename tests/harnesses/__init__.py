"""Scripts the tests run as subprocesses: a kill at a known point, several processes,
audited file writes."""
