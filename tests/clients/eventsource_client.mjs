// An independent SSE client for herald's tests (tests/it/independent_clients.rs): the npm
// `eventsource` package, a WHATWG-compatible EventSource for Node.js.
//
// Subscribes to BASE_URL/events?topic=..., prints {"ready":true} when the stream is open,
// then every event as one JSON line {"type","id","data"} (id is the event's lastEventId),
// and exits 0 after --count events. Any error event (a refusal or a dropped stream), or
// --timeout-ms without enough events, exits non-zero with the reason on stderr.
//
// usage: node eventsource_client.mjs --url http://127.0.0.1:PORT --topic T [--topic T2]
//            [--last-event-id ID] [--event NAME ...] --count N [--timeout-ms MS]
//
// An EventSource only dispatches named events to listeners for that name, so every event
// name the test publishes is given with --event ("message" is always listened to).

import { parseArgs } from "node:util";

function fail(status, message) {
  process.stderr.write(`eventsource_client: ${message}\n`);
  process.exit(status);
}

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    topic: { type: "string", multiple: true, default: [] },
    "last-event-id": { type: "string" },
    event: { type: "string", multiple: true, default: [] },
    count: { type: "string" },
    "timeout-ms": { type: "string", default: "10000" },
  },
  strict: true,
});
const count = Number(args.count);
const timeoutMs = Number(args["timeout-ms"]);
if (!args.url || args.topic.length === 0 || !Number.isInteger(count) || count < 0) {
  fail(2, "usage: --url URL --topic T [--topic T2] [--last-event-id ID] [--event NAME] --count N");
}

let EventSource;
try {
  ({ EventSource } = await import("eventsource"));
} catch (error) {
  fail(
    3,
    `the npm package "eventsource" is not installed (run: cd tests/clients && npm ci): ${error.message}`,
  );
}

const url = new URL("/events", args.url);
for (const topic of args.topic) {
  url.searchParams.append("topic", topic);
}
const lastEventId = args["last-event-id"];
let firstRequest = true;
const source = new EventSource(url.href, {
  // The package's documented way to set request headers: wrap fetch. Only the first request
  // carries the given id; this client never reconnects (an error ends it).
  fetch: (input, init) => {
    const headers = { ...init.headers };
    if (firstRequest && lastEventId !== undefined) {
      headers["Last-Event-ID"] = lastEventId;
    }
    firstRequest = false;
    return fetch(input, { ...init, headers });
  },
});

function print(object) {
  process.stdout.write(JSON.stringify(object) + "\n");
}

let received = 0;
const timer = setTimeout(() => {
  source.close();
  fail(4, `timed out after ${timeoutMs} ms with ${received} of ${count} events from ${url.href}`);
}, timeoutMs);

function finish() {
  clearTimeout(timer);
  source.close();
}

function onEvent(event) {
  if (received >= count) {
    return;
  }
  received += 1;
  print({ type: event.type, id: event.lastEventId, data: event.data });
  if (received === count) {
    finish();
  }
}

source.addEventListener("open", () => {
  print({ ready: true });
  if (count === 0) {
    finish();
  }
});
source.addEventListener("error", (event) => {
  source.close();
  const detail = [event.code, event.message].filter((part) => part !== undefined).join(" ");
  fail(1, `error event after ${received} of ${count} events from ${url.href}: ${detail}`);
});
for (const name of new Set(["message", ...args.event])) {
  source.addEventListener(name, onEvent);
}
