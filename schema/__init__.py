"""What the API looks like: Strawberry types, inputs, enums, scalars and the Schema (root.py)."""
