"""The Redis adapters: the shared tier, and Better Auth's own secondary storage as a session source."""
