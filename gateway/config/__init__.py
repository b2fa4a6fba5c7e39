"""The one typed configuration: read from the environment once, checked all at once."""
