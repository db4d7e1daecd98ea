"""Logging and metrics setup shared by the server and the workers."""
