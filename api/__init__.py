"""The API as served: the Strawberry Schema assembled from resolvers/ (schema.py), and what
only assembly and transport use: the HTTP/WebSocket app (transport.py), limits, the error
mapping, rate limits, request logging and shared subscription results. The top layer
below the entry points (docs/ARCHITECTURE.md)."""
