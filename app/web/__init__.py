"""Web glue every domain's routes share: templates, the error envelope, request guards and headers."""
