"""The functions behind Query/Mutation/Subscription fields: who may do what, one transaction.
The Schema is assembled from them in api/schema.py."""
