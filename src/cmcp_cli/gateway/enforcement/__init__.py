"""What policy says of a message: Cedar decisions, redaction and operator approvals."""
