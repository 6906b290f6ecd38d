"""Mutation groups, one module each (billing, credit, payments); ``resolvers.mutation``
merges them into the ``Mutation`` root."""
