"""What the API looks like: Strawberry types, inputs, enums, and the argument checks and
pagination they share with resolvers/. The Schema itself is assembled in api/schema.py."""
