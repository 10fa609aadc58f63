"""The base every layer uses: exceptions, models, events, versions, logging, fault points and
durable file writes. It imports nothing else of the package."""
