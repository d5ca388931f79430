"""Layer families: each module holds reference forwards and hand-derived VJPs."""
