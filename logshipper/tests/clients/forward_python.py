"""Sends log events to a Fluent Forward server with the fluent-logger package (PyPI).

Usage: python3 forward_python.py PORT TAG LABEL COUNT PREFIX
Exits non-zero if any event could not be sent.
"""
import sys

from fluent import sender


def main():
    port, tag, label, count, prefix = sys.argv[1:6]
    s = sender.FluentSender(tag, host="127.0.0.1", port=int(port), nanosecond_precision=True)
    for i in range(int(count)):
        if not s.emit(label, {"message": f"{prefix} {i}", "stream": "stderr"}):
            raise SystemExit(f"emit failed: {s.last_error}")
    s.close()


if __name__ == "__main__":
    main()
