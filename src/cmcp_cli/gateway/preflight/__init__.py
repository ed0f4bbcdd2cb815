"""Before the gateway starts: every check of `validate-config`, and `cmcp measure`."""
