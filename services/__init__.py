"""The billing engine: plain async functions over an SQLAlchemy session.

Nothing here knows about GraphQL or HTTP; resolvers and the CLI call in.
"""
