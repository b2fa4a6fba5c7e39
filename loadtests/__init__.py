"""Locust load tests that check the gateway's answers under load (``run.sh``)."""
