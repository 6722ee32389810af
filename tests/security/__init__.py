"""Attacks on OpenDeep over the real wire (HTTP, FastAGI, AudioSocket, AMI): the threat model in SECURITY.md."""
