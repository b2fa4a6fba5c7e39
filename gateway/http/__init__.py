"""The HTTP adapter: the RSGI app, forward auth, the original request behind it, policy and the failure budget."""
