"""Floods herald with subscriptions whose auth decision is slow or failing:
python3 auth_flood.py HOST:PORT TOKEN SECONDS THREADS. Prints statuses seen."""
import collections, socket, sys, threading, time

host, port = sys.argv[1].split(":")
token, seconds, threads = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
end = time.time() + seconds
counts = collections.Counter()
lock = threading.Lock()

def worker():
    while time.time() < end:
        try:
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(f"GET /events?topic=flood&token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = s.recv(256).split(b"\r\n", 1)[0].decode(errors="replace")
            status = head.split(" ")[1] if " " in head else "?"
        except OSError as e:
            status = type(e).__name__
        finally:
            try: s.close()
            except Exception: pass
        with lock:
            counts[status] += 1

ts = [threading.Thread(target=worker) for _ in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print(dict(counts), flush=True)
