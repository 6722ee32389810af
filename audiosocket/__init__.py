"""AudioSocket server and the live call AI.

Asterisk's `AudioSocket(uuid,host:port)` connects here once the callee answers; `server.py` finds the call by
its UUID and hands the socket to `bridge.py`, which joins it to an OpenAI Realtime session (`realtime.py`; its
per-frame path in `model_socket.py`).
`protocol.py` knows the bytes, `pacing.py` the 20 ms clock, `tools.py` what the call AI may do,
`instructions.py` what it is told, `recorder.py` what is written to the database.
"""
