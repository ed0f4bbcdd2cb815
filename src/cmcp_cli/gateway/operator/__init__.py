"""Routes for people around the gateway: approvals, audit export, metrics."""
