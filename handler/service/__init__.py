"""Answering a request: the cache first, then one generation per distinct request."""
