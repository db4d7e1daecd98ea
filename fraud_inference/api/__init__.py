"""HTTP only: routes, msgspec bodies, error mapping, middleware and the app factory."""
