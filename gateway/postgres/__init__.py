"""The Postgres adapter: Better Auth's tables as the source of truth, the triggers and their LISTEN."""
