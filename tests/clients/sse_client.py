"""An independent SSE client for herald's tests (tests/it/independent_clients.rs): httpx with
httpx-sse.

Subscribes to BASE_URL/events?topic=..., prints {"ready": true} once the response head has
arrived, then every event httpx-sse yields as one JSON line {"type", "id", "data", "retry"}
("retry" only when the block had a retry: field), and exits 0 after --count events. A
refusal, a stream that ends early, or --timeout-ms without enough events exits non-zero with
the reason on stderr.

httpx-sse yields a block that has fields but no data: line (herald's opening `retry:` frame)
as an event with empty data, where a WHATWG EventSource dispatches nothing; it is printed as
yielded and counted, so the caller decides what it means.

usage: python3 sse_client.py --url http://127.0.0.1:PORT --topic T [--topic T2]
           [--last-event-id ID] --count N [--timeout-ms MS]
"""

import argparse
import json
import signal
import sys


def fail(status, message):
    sys.stderr.write(f"sse_client: {message}\n")
    sys.stderr.flush()
    sys.exit(status)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", action="append", required=True)
    parser.add_argument("--last-event-id")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout-ms", type=int, default=10_000)
    args = parser.parse_args()

    try:
        import httpx
        from httpx_sse import connect_sse
    except ImportError as error:
        fail(
            3,
            "the Python packages httpx and httpx-sse are not installed "
            f"(run: python3 -m pip install -r tests/clients/requirements.txt): {error}",
        )

    url = args.url.rstrip("/") + "/events"
    received = 0

    def on_timeout(_signum, _frame):
        fail(4, f"timed out after {args.timeout_ms} ms with {received} of {args.count} events from {url}")

    # One deadline for the whole run, whatever the socket is doing.
    signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, args.timeout_ms / 1000)

    def emit(value):
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    headers = {}
    if args.last_event_id is not None:
        headers["Last-Event-ID"] = args.last_event_id
    params = [("topic", topic) for topic in args.topic]
    with httpx.Client(timeout=httpx.Timeout(args.timeout_ms / 1000)) as client:
        with connect_sse(client, "GET", url, params=params, headers=headers) as source:
            response = source.response
            if response.status_code != 200:
                response.read()
                fail(1, f"GET {response.url} answered {response.status_code}: {response.text!r}")
            emit({"ready": True})
            if args.count > 0:
                for event in source.iter_sse():
                    line = {"type": event.event, "id": event.id, "data": event.data}
                    if event.retry is not None:
                        line["retry"] = event.retry
                    emit(line)
                    received += 1
                    if received == args.count:
                        break
    if received < args.count:
        fail(1, f"the stream from {url} ended after {received} of {args.count} events")
    signal.setitimer(signal.ITIMER_REAL, 0)


if __name__ == "__main__":
    main()
