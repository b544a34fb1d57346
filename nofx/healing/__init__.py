"""The healing track's plain code: actions against real components, and their capabilities."""
