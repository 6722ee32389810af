"""FastAGI: the AGI wire (protocol.py), our asyncio server (server.py) and the call decisions (routes.py)."""
