"""The HTTP routes, thin: each one calls the service and shapes its answer."""
