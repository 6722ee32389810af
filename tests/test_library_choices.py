"""Why pyst2 is not our FastAGI or AMI layer: what the README says, shown on this Python.

(panoramisk's FastAGI spinning on an early close is shown in tests/test_fastagi_server.py; its async-Originate
and re-send behaviour in tests/test_ami_wire.py.)
"""

import threading

import pytest


def test_pyst2_fastagi_does_not_import_on_python3():
    with pytest.raises(ModuleNotFoundError, match="SocketServer"):
        import asterisk.fastagi  # noqa: F401


def test_pyst2_agi_needs_the_main_thread_and_blocks_on_stdin():
    """asterisk.agi.AGI installs a SIGHUP handler and reads the environment from stdin in __init__: fine for a
    process-per-call AGI(script), unusable inside an asyncio server that serves many calls in one process."""
    from asterisk.agi import AGI

    errors: list[BaseException] = []

    def build() -> None:
        try:
            AGI()
        except BaseException as exc:  # noqa: BLE001 - we want to see exactly what it raises
            errors.append(exc)

    worker = threading.Thread(target=build)
    worker.start()
    worker.join(5)
    assert not worker.is_alive()
    assert isinstance(errors[0], ValueError) and "main thread" in str(errors[0])
