"""Model artifacts: what a version's MLmodel says (server side) and how to score it (worker side)."""
