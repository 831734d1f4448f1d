"""Persistence: SQLAlchemy models, the engine, and every SQL statement (one module per aggregate).

Functions here take a session first, may flush, and never commit: the resolver that calls
them owns the transaction.
"""
