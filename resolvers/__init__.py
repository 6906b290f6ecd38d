"""Query, Mutation and Subscription: GraphQL in, services called, types out.

Also the per-request context, the DataLoader registry, the mappers from rows to
Strawberry types, keyset pagination and the permission checks.
"""
