"""OpenDeep: multi-tenant AI outbound calling on Asterisk."""

__version__ = "0.1.0"
