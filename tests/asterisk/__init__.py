"""A real Asterisk 22 for the tests: found or built (build_asterisk.sh), run privately per test session."""
