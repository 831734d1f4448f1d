"""The functions behind Query/Mutation/Subscription fields: who may do what, one transaction."""
