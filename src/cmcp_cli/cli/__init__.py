"""The `cmcp` command line: parse, call one library function, render."""
