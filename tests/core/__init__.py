"""Configuration, its generated page, and the layers' dependency direction."""
