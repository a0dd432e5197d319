"""Request-independent work of the search service: encoding, search, index and media."""
