"""uvicorn serving the relay under cProfile (main thread), for `run.py --profile`.

py-spy cannot unwind Python frames called back from uvloop, so this deterministic profile is
the one that shows where the event loop's time goes. Stats are written on SIGTERM.
"""

import cProfile
import os
import signal
import sys

import uvicorn


def main() -> None:
    sys.path.insert(0, os.getcwd())  # the project root, where run.py starts us
    port, output = int(sys.argv[1]), sys.argv[2]
    profiler = cProfile.Profile()

    def stop(*_signal) -> None:
        profiler.disable()
        profiler.dump_stats(output)
        os._exit(0)

    config = uvicorn.Config(
        "relay.asgi:application", host="127.0.0.1", port=port, loop="uvloop",
        http="relay.server:RelayHttpProtocol", timeout_keep_alive=5, access_log=False,
        log_level="warning", lifespan="on",
    )  # fmt: skip
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None
    signal.signal(signal.SIGTERM, stop)
    profiler.enable()
    server.run()


if __name__ == "__main__":
    main()
