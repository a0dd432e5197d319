"""HTTP routes of the search service; each route validates, calls a service and returns."""
